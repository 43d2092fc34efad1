"""Closed-loop throughput through the server (dynamic batching) against in-process ONNX Runtime at the batch it formed.

    python bench/throughput.py [--models resnet18,lenet] [--concurrency 1,8,32,64] [--duration 5]

For each level the load generator drives the server (closed loop, batch-1 requests); the
server's metrics give the mean batch its batcher formed; then ONNX Runtime alone runs that batch
size in this process. Target: resnet18 at concurrency 32 reaches at least 80% of in-process
images/s at the same batch size, and no level has errors.
"""
import argparse

import numpy as np
import onnxruntime as ort
from common import median_ms, random_init_repository, write_json

from client.loadtest import Level, Workload, run_level
from client.spawn import SpawnedServer
from server.metrics import sample_value
from server.runtime import ModelRuntime, RuntimeOptions

TARGET = ("resnet18", 32, 0.80)


def histogram(text: str, model: str) -> tuple[float, float]:
    """Images batched so far and ONNX Runtime runs so far for `model`."""
    return (sample_value(text, "cnnserve_batch_size_sum", model=model),
            sample_value(text, "cnnserve_batch_size_count", model=model))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet18,lenet")
    parser.add_argument("--concurrency", default="1,8,32,64")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args()
    models = args.models.split(",")
    repository = random_init_repository(models)
    server = SpawnedServer(repository, ["--models", ",".join(models)], with_metrics=True)
    rows = []
    try:
        for model in models:
            runtime = ModelRuntime(repository / model / "1" / "model.onnx", RuntimeOptions())
            for concurrency in map(int, args.concurrency.split(",")):
                workload = Workload(target=server.target, model=model, warmup_s=1.0, duration_s=args.duration,
                                    processes=args.processes)
                before = histogram(server.metrics(), model)
                load = run_level(workload, Level(concurrency=concurrency))
                after = histogram(server.metrics(), model)
                mean_batch = (after[0] - before[0]) / max(after[1] - before[1], 1)
                batch = max(1, round(mean_batch))
                images = np.random.default_rng(0).integers(0, 256, (batch, 1, 28, 28), dtype=np.uint8)
                in_process = batch / median_ms(lambda: runtime.run(images, ["logits"]), budget_s=2.0) * 1e3
                rows.append({"model": model, "concurrency": concurrency, "server_images_per_s": load["images_per_s"],
                             "p50_ms": load["p50_ms"], "p99_ms": load["p99_ms"], "failed": load["failed"],
                             "mean_batch": mean_batch, "in_process_images_per_s": in_process,
                             "ratio": load["images_per_s"] / in_process})
    finally:
        server.stop()
    print(f"onnxruntime {ort.__version__}; closed loop, batch-1 requests, {args.duration:g} s per level, "
          f"{args.processes} client processes on the same machine")
    print(f"{'model':<9} {'conc':>4} {'server img/s':>12} {'p50 ms':>8} {'p99 ms':>8} {'mean batch':>10} "
          f"{'ORT img/s':>10} {'ratio':>6} {'errors':>7}")
    for r in rows:
        verdict = ""
        if (r["model"], r["concurrency"]) == TARGET[:2]:
            verdict = "PASS" if r["ratio"] >= TARGET[2] else f"MISS by {(TARGET[2] - r['ratio']) * 100:.0f} points"
        errors = sum(r["failed"].values())
        print(f"{r['model']:<9} {r['concurrency']:>4} {r['server_images_per_s']:>12.1f} {r['p50_ms']:>8.2f} "
              f"{r['p99_ms']:>8.2f} {r['mean_batch']:>10.2f} {r['in_process_images_per_s']:>10.1f} "
              f"{r['ratio']:>6.2f} {errors:>7}  {verdict}")
    write_json("throughput", rows)


if __name__ == "__main__":
    main()
