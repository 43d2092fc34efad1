"""ONNX Runtime (CPU provider) against eager PyTorch, every architecture, batch 1 and 64.

    python bench/ort_vs_eager.py [--archs all] [--batches 1,64]

Both run the same serving graph (uint8 in, preprocessing, logits out) on the same input, one
after the other in this process. Target: ONNX Runtime at least 2x faster than eager at batch 1.
"""
import argparse

import numpy as np
import onnxruntime as ort
import torch
from common import median_ms, random_init_repository, write_json

from cnnserve.spec import Preprocessing
from export.graph import ServingGraph
from models import create_model, list_models

TARGET_SPEEDUP = 2.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="all")
    parser.add_argument("--batches", default="1,64")
    args = parser.parse_args()
    archs = list_models() if args.archs == "all" else args.archs.split(",")
    repository = random_init_repository(archs)
    rows = []
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), onnxruntime {ort.__version__}")
    print(f"{'arch':<10} {'batch':>5} {'eager ms':>10} {'ORT ms':>10} {'speedup':>8}  target (batch 1: >= {TARGET_SPEEDUP}x)")
    for arch in archs:
        torch.manual_seed(0)
        model = create_model(arch).eval()
        graph = ServingGraph(model, [], Preprocessing(side=model.input_side))
        session = ort.InferenceSession(str(repository / arch / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
        for batch in map(int, args.batches.split(",")):
            images = np.random.default_rng(0).integers(0, 256, (batch, 1, 28, 28), dtype=np.uint8)
            tensor = torch.from_numpy(images)
            budget = 2.0 if batch == 1 else 4.0
            with torch.inference_mode():
                eager = median_ms(lambda: graph(tensor), min_runs=3, budget_s=budget)
            onnx = median_ms(lambda: session.run(["logits"], {"image": images}), min_runs=3, budget_s=budget)
            speedup = eager / onnx
            verdict = ""
            if batch == 1:
                verdict = "PASS" if speedup >= TARGET_SPEEDUP else f"MISS by {TARGET_SPEEDUP - speedup:.2f}x"
            rows.append({"arch": arch, "batch": batch, "eager_ms": eager, "ort_ms": onnx, "speedup": speedup})
            print(f"{arch:<10} {batch:>5} {eager:>10.2f} {onnx:>10.2f} {speedup:>7.2f}x  {verdict}", flush=True)
    write_json("ort_vs_eager", rows)


if __name__ == "__main__":
    main()
