"""What the server adds to a batch-1 Classify (no feature maps), against in-process ONNX Runtime and a bare gRPC echo.

    python bench/server_overhead.py [--models lenet,resnet18] [--rounds 6]

Measured side by side, in interleaved rounds: (a) ONNX Runtime called in-process on the same
input, (b) a bare gRPC echo service carrying the same request bytes on the same server settings,
(c) Classify through cnnserve. Target: Classify p50 minus in-process p50 at most 1.25x echo p50.
"""
import argparse
import statistics
import subprocess
import sys
import time

import numpy as np
import onnxruntime as ort
from common import ROOT, random_init_repository, write_json

from client.cli import connect, raw_image
from client.spawn import SpawnedServer
from cnnserve.proto import classifier_pb2 as pb
from server.runtime import ModelRuntime, RuntimeOptions

TARGET_RATIO = 1.25


def samples_ms(fn, seconds: float) -> list[float]:
    out, start = [], time.perf_counter()
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1e3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="lenet,resnet18")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=1.0, help="per measurement per round")
    args = parser.parse_args()
    models = args.models.split(",")
    repository = random_init_repository(models)
    server = SpawnedServer(repository, ["--models", ",".join(models)])
    echo_process = subprocess.Popen([sys.executable, str(ROOT / "bench" / "echo_server.py")], stdout=subprocess.PIPE, text=True)
    echo_channel = connect(f"127.0.0.1:{echo_process.stdout.readline().strip()}")
    echo = echo_channel.unary_unary("/cnnserve.bench.Echo/Echo", request_serializer=pb.ClassifyRequest.SerializeToString,
                                    response_deserializer=pb.ClassifyRequest.FromString)
    rows = []
    try:
        image = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
        for model in models:
            request = pb.ClassifyRequest(model=model, images=[raw_image(image)], top_k=1)
            runtime = ModelRuntime(repository / model / "1" / "model.onnx", RuntimeOptions())
            batch = image[None, None]
            measured = {"in_process": [], "echo": [], "classify": []}
            for _ in range(3):
                server.stub.Classify(request, timeout=10), echo(request, timeout=10), runtime.run(batch, ["logits"])
            for _ in range(args.rounds):
                measured["in_process"] += samples_ms(lambda: runtime.run(batch, ["logits"]), args.seconds)
                measured["echo"] += samples_ms(lambda: echo(request, timeout=10), args.seconds)
                measured["classify"] += samples_ms(lambda: server.stub.Classify(request, timeout=10), args.seconds)
            p50 = {k: statistics.median(v) for k, v in measured.items()}
            added = p50["classify"] - p50["in_process"]
            rows.append({"model": model, "request_bytes": request.ByteSize(), **{f"{k}_p50_ms": v for k, v in p50.items()},
                         "server_added_ms": added, "ratio_to_echo": added / p50["echo"],
                         "samples": {k: len(v) for k, v in measured.items()}})
    finally:
        server.stop()
        echo_process.terminate()
    print(f"onnxruntime {ort.__version__}; p50 over {args.rounds} interleaved rounds of {args.seconds:g} s each")
    print(f"{'model':<10} {'in-process':>11} {'echo':>8} {'Classify':>9} {'added':>8} {'added/echo':>11}  "
          f"target <= {TARGET_RATIO}")
    for r in rows:
        verdict = "PASS" if r["ratio_to_echo"] <= TARGET_RATIO else f"MISS by {r['ratio_to_echo'] - TARGET_RATIO:.2f}"
        print(f"{r['model']:<10} {r['in_process_p50_ms']:>9.3f}ms {r['echo_p50_ms']:>6.3f}ms {r['classify_p50_ms']:>7.3f}ms "
              f"{r['server_added_ms']:>6.3f}ms {r['ratio_to_echo']:>10.2f}x  {verdict}")
    write_json("server_overhead", rows)


if __name__ == "__main__":
    main()
