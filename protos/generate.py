"""Generate the Python gRPC code in cnnserve/proto/ from protos/cnnserve/v1/classifier.proto.

    python protos/generate.py            # regenerate in place
    python protos/generate.py --out DIR  # generate under DIR (the staleness test compares)

The proto path is mapped to the package `cnnserve.proto`, so the generated modules import each
other as `cnnserve.proto.classifier_pb2` and need no sys.path tricks. Beside them goes
`classifier.binpb`, the proto as a FileDescriptorSet under its real name
(`cnnserve/v1/classifier.proto`) with its comments, which server reflection serves.
"""
import argparse
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "protos" / "cnnserve" / "v1" / "classifier.proto"


def generate(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    args = ["protoc", f"-Icnnserve/proto={SOURCE.parent}", f"-I{Path(protoc.__file__).parent / '_proto'}",
            f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}", str(SOURCE)]
    descriptor_set = out / "cnnserve" / "proto" / "classifier.binpb"
    documented = ["protoc", f"-I{ROOT / 'protos'}", "--include_source_info", f"--descriptor_set_out={descriptor_set}",
                  str(SOURCE)]
    if protoc.main(args) != 0 or protoc.main(documented) != 0:
        sys.exit("protoc failed")
    return sorted((out / "cnnserve" / "proto").glob("classifier*"))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT)
    for path in generate(parser.parse_args().out):
        print(path)
