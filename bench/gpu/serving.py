"""Serving on the CUDA execution provider, measured side by side with in-process ONNX Runtime.

    python bench/gpu/serving.py --repository REPO [--models lenet_bn,resnet18] [--duration 5] [--json out.json]

Per model: the provider the server reports in ModelInfo (read back from its session), and the
batch-1 Classify p50 at concurrency 1. For resnet18 (or the last model): 64 images per request at
concurrency 4, in images/s, against in-process ONNX Runtime on the same file and provider at
batch 64, with plain `run` and with IO binding; the ratio server / in-process is printed.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from client.loadtest import Level, Workload, run_level  # noqa: E402
from client.spawn import SpawnedServer  # noqa: E402
from cnnserve.proto import classifier_pb2 as pb  # noqa: E402
from cnnserve.repository import load_version  # noqa: E402
from server.runtime import ModelRuntime, RuntimeOptions, preload_cuda_libraries  # noqa: E402


def in_process(model_path: Path, batch: int, seconds: float, device: str) -> dict:
    """images/s of in-process ONNX Runtime at `batch`, logits only: plain run (host arrays) and IO binding."""
    import onnxruntime as ort
    runtime = ModelRuntime(model_path, RuntimeOptions(device=device))
    session = runtime.session
    images = np.random.default_rng(0).integers(0, 256, (batch, 1, 28, 28), dtype=np.uint8)

    def rate(step) -> float:
        for _ in range(10):
            step()
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            step()
            n += 1
        return n * batch / (time.perf_counter() - start)

    binding = session.io_binding()
    binding.bind_ortvalue_input(runtime.input_name, ort.OrtValue.ortvalue_from_numpy(images, device, 0))
    binding.bind_output("logits", "cpu")

    def bound() -> None:
        session.run_with_iobinding(binding)
        binding.copy_outputs_to_cpu()

    return {"provider": runtime.provider,
            "run_images_per_s": rate(lambda: session.run(["logits"], {runtime.input_name: images})),
            "iobinding_images_per_s": rate(bound)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--models", default="lenet_bn,resnet18")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cpu: to try this script without a GPU")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    preload_cuda_libraries()
    results = {}
    models = args.models.split(",")
    for name in models:
        server = SpawnedServer(args.repository, ["--device", args.device, "--models", name],
                               log_path=Path(f"/tmp/server-{name}.log"))
        try:
            info = server.stub.GetModel(pb.GetModelRequest(name=name), timeout=10)
            row = {"provider": info.provider, "version": info.version}
            one = run_level(Workload(server.target, name, duration_s=args.duration, warmup_s=1), Level(concurrency=1), live=False)
            row["batch1_c1"] = {k: one[k] for k in ("requests_per_s", "p50_ms", "p99_ms", "ok", "failed")}
            if name == models[-1]:
                many = run_level(Workload(server.target, name, batch=64, duration_s=args.duration, warmup_s=1),
                                 Level(concurrency=4), live=False)
                row["batch64_c4"] = {k: many[k] for k in ("images_per_s", "p50_ms", "ok", "failed")}
                model_path = load_version(args.repository / name, info.version).model_path
                reference = in_process(model_path, 64, args.duration, args.device)
                row["in_process_batch64"] = reference
                row["ratio_to_in_process"] = many["images_per_s"] / max(reference["run_images_per_s"],
                                                                         reference["iobinding_images_per_s"])
        finally:
            server.stop()
        results[name] = row
        print(name, json.dumps(row, indent=1), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
