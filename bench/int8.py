"""int8 (ONNX Runtime static quantization, QDQ) against fp32, and both against eager PyTorch.

    python bench/int8.py [--archs lenet,lenet_bn,googlenet,resnet18,densenet,alexnet,nin] [--recheck alexnet,nin]
                         [--batches 1,64] [--threads 1,2] [--rounds 3]

1. Every architecture: fp32 and int8 with in-process ONNX Runtime (its default threads: one per
   physical core), logits only, at batch 1 and 64. Target: int8 >= 2x fp32 at batch 64 for
   resnet18 and alexnet.
2. The architectures where fp32 ONNX Runtime is under 2x eager PyTorch at batch 1 (alexnet, nin):
   eager, fp32 and int8 at batch 1 with 1 and 2 threads each (torch.set_num_threads, ONNX
   Runtime's intra-op threads), and 2 threads without ONNX Runtime's spinning (as the server runs
   it). Target: ONNX Runtime >= 2x eager.

Trained architectures use their shipped weights, exported fp32 and int8 (int8 parity checked on
the whole test set) into bench/results/int8-repository/ on first use; the others are random-init
exports, for speed only. The variants alternate over --rounds rounds and each figure is the median
of the per-round medians, so a busy neighbour on the machine weighs on both sides alike.
"""
import argparse
import json
import platform
import statistics

import numpy as np
import onnxruntime as ort
import torch
from common import RESULTS, median_ms, write_json

from cnnserve.spec import LOGITS, Preprocessing
from export.graph import ServingGraph
from export.onnx import export
from models import create_model, list_models

REPOSITORY = RESULTS / "int8-repository"
INT8_TARGETS = {"resnet18": 2.0, "alexnet": 2.0}    # int8 / fp32 at batch 64
EAGER_TARGET = 2.0                                  # ONNX Runtime / eager at batch 1


def model_path(arch: str, int8: bool):
    """The fp32 or int8 export of `arch` (shipped weights when it has them, else random-init), made once."""
    name = f"{arch}_int8" if int8 else arch
    path = REPOSITORY / name / "1" / "model.onnx"
    if not path.exists():
        trained = arch in list_models(trained=True)
        export(arch, REPOSITORY, shipped=trained, random_init=not trained, version=1, quantize="int8" if int8 else None)
    return path


def session(path, threads: int, spinning: bool = True) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads      # 0: ONNX Runtime's default, one per physical core
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def interleaved(calls: dict, rounds: int, budget_s: float) -> dict[str, float]:
    """Median ms of each call, alternating the calls over `rounds` rounds."""
    times = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            times[name].append(median_ms(call, min_runs=3, budget_s=budget_s))
    return {name: statistics.median(values) for name, values in times.items()}


def images(batch: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (batch, 1, 28, 28), dtype=np.uint8)


def int8_vs_fp32(archs: list[str], batches: list[int], rounds: int) -> list[dict]:
    print(f"\n1. int8 against fp32, ONNX Runtime in-process (default threads), logits only; "
          f"target int8 >= 2x fp32 at batch 64 for {', '.join(INT8_TARGETS)}")
    print(f"{'arch':<10} {'weights':<8} {'batch':>5} {'fp32 ms':>9} {'int8 ms':>9} {'speedup':>8}  target")
    rows = []
    for arch in archs:
        fp32, int8 = session(model_path(arch, False), 0), session(model_path(arch, True), 0)
        for batch in batches:
            x = images(batch)
            ms = interleaved({"fp32": lambda: fp32.run([LOGITS], {"image": x}),
                              "int8": lambda: int8.run([LOGITS], {"image": x})}, rounds, 1.0 if batch == 1 else 2.0)
            speedup = ms["fp32"] / ms["int8"]
            target = INT8_TARGETS.get(arch) if batch == 64 else None
            verdict = "" if target is None else "PASS" if speedup >= target else f"MISS by {target - speedup:.2f}x"
            weights = "trained" if arch in list_models(trained=True) else "random"
            rows.append({"arch": arch, "weights": weights, "batch": batch, "fp32_ms": ms["fp32"], "int8_ms": ms["int8"],
                         "speedup": speedup, "target": target})
            print(f"{arch:<10} {weights:<8} {batch:>5} {ms['fp32']:>9.2f} {ms['int8']:>9.2f} {speedup:>7.2f}x  {verdict}",
                  flush=True)
    return rows


def against_eager(archs: list[str], thread_counts: list[int], rounds: int) -> list[dict]:
    print(f"\n2. eager PyTorch against ONNX Runtime fp32 and int8, batch 1; target ORT >= {EAGER_TARGET}x eager")
    print(f"{'arch':<10} {'threads':>13} {'eager ms':>9} {'fp32 ms':>9} {'int8 ms':>9} {'fp32 vs eager':>14} "
          f"{'int8 vs eager':>14}")
    rows, x = [], images(1)
    settings = [(t, True) for t in thread_counts] + [(t, False) for t in thread_counts if t > 1]   # (threads, spinning)
    default_threads = torch.get_num_threads()
    for arch in archs:
        torch.manual_seed(0)
        model = create_model(arch).eval()
        graph = ServingGraph(model, [], Preprocessing(side=model.input_side))
        tensor = torch.from_numpy(x)

        def eager():
            with torch.inference_mode():
                graph(tensor)
        for threads, spinning in settings:
            torch.set_num_threads(threads)
            fp32, int8 = (session(model_path(arch, quantized), threads, spinning) for quantized in (False, True))
            ms = interleaved({"eager": eager, "fp32": lambda: fp32.run([LOGITS], {"image": x}),
                              "int8": lambda: int8.run([LOGITS], {"image": x})}, rounds, 1.0)
            row = {"arch": arch, "threads": threads, "ort_spinning": spinning,
                   "eager_ms": ms["eager"], "fp32_ms": ms["fp32"], "int8_ms": ms["int8"],
                   "fp32_vs_eager": ms["eager"] / ms["fp32"], "int8_vs_eager": ms["eager"] / ms["int8"]}
            rows.append(row)
            marks = {k: "" if row[k] >= EAGER_TARGET else " (miss)" for k in ("fp32_vs_eager", "int8_vs_eager")}
            label = f"{threads}{'' if spinning or threads == 1 else ', no spin'}"
            print(f"{arch:<10} {label:>13} {ms['eager']:>9.2f} {ms['fp32']:>9.2f} {ms['int8']:>9.2f} "
                  f"{row['fp32_vs_eager']:>6.2f}x{marks['fp32_vs_eager']:<7} {row['int8_vs_eager']:>6.2f}x"
                  f"{marks['int8_vs_eager']}", flush=True)
    torch.set_num_threads(default_threads)
    return rows


def parity_summary(archs: list[str]) -> dict:
    summary = {}
    for arch in archs:
        meta = json.loads((REPOSITORY / f"{arch}_int8" / "1" / "metadata.json").read_text())
        parity = meta["parity"]
        summary[arch] = {k: parity[k] for k in ("test_images", "top1_agreement", "fp32_accuracy", "int8_accuracy",
                                                "accuracy_change_points", "gated")}
        summary[arch]["size_mb"] = {"fp32": (REPOSITORY / arch / "1" / "model.onnx").stat().st_size / 1e6,
                                    "int8": meta["size_bytes"] / 1e6}
    print("\nint8 parity (whole test set, trained weights; random-init: first 1,000 images, not required)")
    print(f"{'arch':<10} {'images':>6} {'agreement':>9} {'fp32 acc':>9} {'int8 acc':>9} {'change':>8} {'MB fp32':>8} "
          f"{'MB int8':>8}")
    for arch, s in summary.items():
        print(f"{arch:<10} {s['test_images']:>6} {s['top1_agreement']:>9.2%} {s['fp32_accuracy']:>9.4f} "
              f"{s['int8_accuracy']:>9.4f} {s['accuracy_change_points']:>+7.2f}p {s['size_mb']['fp32']:>8.1f} "
              f"{s['size_mb']['int8']:>8.1f}")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default=",".join([*list_models(trained=True), "alexnet", "nin"]))
    parser.add_argument("--recheck", default="alexnet,nin", help="architectures for part 2 (none: skip it)")
    parser.add_argument("--batches", default="1,64")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    archs = args.archs.split(",")
    recheck = [] if args.recheck == "none" else args.recheck.split(",")
    for arch in dict.fromkeys([*archs, *recheck]):     # build what is missing first, then measure
        for int8 in (False, True):
            model_path(arch, int8)
    print(f"\ntorch {torch.__version__}, onnxruntime {ort.__version__}, {platform.processor() or platform.machine()}, "
          f"torch threads {torch.get_num_threads()}")
    parity = parity_summary(list(dict.fromkeys([*archs, *recheck])))
    rows = int8_vs_fp32(archs, list(map(int, args.batches.split(","))), args.rounds)
    eager = against_eager(recheck, list(map(int, args.threads.split(","))), args.rounds)
    write_json("int8", {"int8_vs_fp32": rows, "against_eager": eager, "parity": parity,
                        "versions": {"torch": torch.__version__, "onnxruntime": ort.__version__}})


if __name__ == "__main__":
    main()
