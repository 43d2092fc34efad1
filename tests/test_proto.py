"""The generated gRPC code in cnnserve/proto/ must be what protos/generate.py makes from the .proto now."""
import subprocess
import sys

from client.spawn import ROOT


def test_generated_code_is_fresh(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "protos" / "generate.py"), "--out", str(tmp_path)], check=True,
                   capture_output=True)
    generated = sorted((tmp_path / "cnnserve" / "proto").glob("classifier*"))
    assert [p.name for p in generated] == ["classifier.binpb", "classifier_pb2.py", "classifier_pb2.pyi",
                                           "classifier_pb2_grpc.py"]
    for path in generated:
        assert path.read_bytes() == (ROOT / "cnnserve" / "proto" / path.name).read_bytes(), \
            f"cnnserve/proto/{path.name} is stale: run `python protos/generate.py`"
