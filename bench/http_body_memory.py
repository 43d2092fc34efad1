"""Peak server memory (VmHWM) while the KServe v2 HTTP front receives one large binary body.

    python bench/http_body_memory.py [--mb 60]

Starts a server (lenet_bn only, `--max-message-mb 64`) and posts a binary-data request of `--mb`
megabytes whose tensor is too large to run (refused with 400 after the body is read), so what is
measured is what receiving and parsing the body costs. Prints the server's resident memory before,
and its peak after.
"""
import argparse
import http.client
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from client.spawn import ROOT, SpawnedServer  # noqa: E402


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def measure(mb: int) -> tuple[float, float, int]:
    server = SpawnedServer(ROOT / "model_repository", ["--models", "lenet_bn", "--max-message-mb", "64"],
                           with_http=True)
    try:
        before = status_kb(server.process.pid, "VmRSS")
        images = mb * 10**6 // 784
        header = json.dumps({"inputs": [{"name": "image", "datatype": "UINT8", "shape": [images, 1, 28, 28],
                                         "parameters": {"binary_data_size": images * 784}}]}).encode()
        body = header + bytes(images * 784)
        connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=120)
        connection.request("POST", "/v2/models/lenet_bn/infer", body,
                           {"Inference-Header-Content-Length": str(len(header))})
        status = connection.getresponse().status
        peak = status_kb(server.process.pid, "VmHWM")
        return before / 1024, peak / 1024, status
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=60)
    args = parser.parse_args()
    before, peak, status = measure(args.mb)
    print(f"{args.mb} MB body: HTTP {status}, server RSS {before:.0f} MB before, peak {peak:.0f} MB "
          f"(+{peak - before:.0f} MB)")


if __name__ == "__main__":
    main()
