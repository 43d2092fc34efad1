"""A flood of large requests against one polite caller: does the polite caller keep its latency?

    python bench/fairness.py [--model resnet18] [--callers 40] [--images 64] [--seconds 20] [--max-run-images 2]

`callers` flood connections each send `images`-image requests back to back for `seconds`; one
more connection sends 1-image requests one after another. Printed: the polite caller's p50/p99
unloaded and under the flood, their ratio (target: p99 under the flood within 3x of unloaded), and
what the flood got (answers, RESOURCE_EXHAUSTED). The test suite runs a small version of this.
"""
from __future__ import annotations

import argparse
import threading
import time
from collections import Counter
from pathlib import Path

import grpc
import numpy as np

from client.channel import connect
from client.spawn import ROOT, SpawnedServer
from cnnserve.proto import classifier_pb2 as pb
from cnnserve.proto import classifier_pb2_grpc


def request(model: str, n: int) -> pb.ClassifyRequest:
    pixels = np.random.default_rng(n).integers(0, 256, (28, 28), dtype=np.uint8).tobytes()
    image = pb.Image(tensor=pb.Tensor(shape=[28, 28], dtype="uint8", data=pixels))
    return pb.ClassifyRequest(model=model, images=[image] * n)


def polite_latencies(stub, model: str, count: int) -> list[float]:
    latencies, one = [], request(model, 1)
    for _ in range(count):
        start = time.perf_counter()
        stub.Classify(one, timeout=60)
        latencies.append(time.perf_counter() - start)
    return latencies


def run(target: str, model: str, callers: int, images: int, seconds: float, polite_count: int = 30) -> dict:
    polite = classifier_pb2_grpc.ClassifierStub(connect(target, own_connection=True))
    polite_latencies(polite, model, 5)                                   # warm
    unloaded = polite_latencies(polite, model, polite_count)
    outcomes: Counter = Counter()
    stop = threading.Event()

    def flood() -> None:
        stub = classifier_pb2_grpc.ClassifierStub(connect(target, own_connection=True))   # its own caller
        big = request(model, images)
        while not stop.is_set():
            try:
                stub.Classify(big, timeout=120)
                outcomes["OK"] += 1
            except grpc.RpcError as error:
                outcomes[error.code().name] += 1

    threads = [threading.Thread(target=flood, daemon=True) for _ in range(callers)]
    for thread in threads:
        thread.start()
    time.sleep(min(2.0, seconds / 4))                                    # let the queue fill
    loaded, deadline = [], time.monotonic() + seconds
    refused = 0
    while time.monotonic() < deadline:
        try:
            loaded += polite_latencies(polite, model, 1)
        except grpc.RpcError:
            refused += 1
    stop.set()
    for thread in threads:
        thread.join(180)
    p = lambda values, q: float(np.percentile(values, q)) * 1e3
    return {"unloaded_p50_ms": p(unloaded, 50), "unloaded_p99_ms": p(unloaded, 99),
            "loaded_p50_ms": p(loaded, 50), "loaded_p99_ms": p(loaded, 99), "polite_requests": len(loaded),
            "polite_refused": refused, "p99_ratio": p(loaded, 99) / p(unloaded, 99), "flood": dict(outcomes)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--callers", type=int, default=40)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--max-run-images", type=int, help="passed to the server (default: the model's config)")
    args = parser.parse_args()
    flags = ["--models", args.model, "--max-concurrent-rpcs", str(4 * args.callers + 64)]
    if args.max_run_images:
        flags += ["--max-run-images", str(args.max_run_images)]
    server = SpawnedServer(args.model_repository, flags)
    try:
        result = run(server.target, args.model, args.callers, args.images, args.seconds)
    finally:
        server.stop()
    print(f"{args.model}: {args.callers} callers x {args.images} images, max_run_images "
          f"{args.max_run_images or 'from config'}, {args.seconds:.0f} s")
    print(f"polite caller p50 {result['unloaded_p50_ms']:.1f} -> {result['loaded_p50_ms']:.1f} ms, "
          f"p99 {result['unloaded_p99_ms']:.1f} -> {result['loaded_p99_ms']:.1f} ms "
          f"(x{result['p99_ratio']:.2f}, target <= 3), {result['polite_requests']} requests, "
          f"{result['polite_refused']} refused; flood: {result['flood']}")


if __name__ == "__main__":
    main()
