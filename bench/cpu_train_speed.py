"""Training throughput (images/s) on this CPU for each speed-up, measured side by side in one run.

    python bench/cpu_train_speed.py [--archs resnet18,densenet] [--sides 96,64,48] [--steps 6] [--allocator-only]
                                    [--eval-batches 1000,250]

Each cell is `--steps` SGD steps of batch 128 after `--warmup` steps (oneDNN builds its kernels in the
first steps, which run several times slower): fp32 vs bf16 autocast, contiguous vs channels-last, at
each input side. Each step is timed alone and the cell reports the steady state, the median step after
warm-up, as images/s and the ratio to fp32/contiguous. Every cell keeps freed memory in the heap, as
`python -m models.train` does (models/train.py: freed_memory_kept_in_the_heap); the last row of each
side is bf16 + channels-last with glibc's default malloc, for comparison. Each cell runs in a fresh
process, so no cell inherits another's heap or allocator settings. `--eval-batches` measures scoring
instead (forward only, bf16 + channels-last, as training scores the test set) at each batch size.
"""
import argparse
import concurrent.futures
import contextlib
import itertools
import multiprocessing
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import models  # noqa: E402,F401  (registers the architectures)
from models.registry import create_model  # noqa: E402
from models.train import freed_memory_kept_in_the_heap  # noqa: E402


def images_per_s(arch: str, side: int, bf16: bool, channels_last: bool, steps: int, batch: int,
                 warmup: int = 2, keep_heap: bool = True) -> tuple[float, float]:
    """Images per second of the median step after `warmup` steps, and the share of the process's CPU
    time spent in the kernel (page faults, mostly)."""
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = create_model(arch).to(memory_format=fmt).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 1, side, side).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (batch,))
    loss_fn = nn.CrossEntropyLoss()
    seconds = []
    with freed_memory_kept_in_the_heap() if keep_heap else contextlib.nullcontext():
        for _ in range(warmup + steps):
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = loss_fn(model(x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seconds.append(time.perf_counter() - start)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return batch / statistics.median(seconds[warmup:]), usage.ru_stime / (usage.ru_stime + usage.ru_utime)


@torch.no_grad()
def scored_images_per_s(arch: str, side: int, batch: int, steps: int, warmup: int) -> float:
    """Images per second of the median forward pass (eval mode, bf16 autocast, channels-last) after `warmup`."""
    model = create_model(arch).to(memory_format=torch.channels_last).eval()
    x = torch.randn(batch, 1, side, side).contiguous(memory_format=torch.channels_last)
    seconds = []
    with freed_memory_kept_in_the_heap():
        for _ in range(warmup + steps):
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                model(x)
            seconds.append(time.perf_counter() - start)
    return batch / statistics.median(seconds[warmup:])


def in_a_fresh_process(function, *args):
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(function, *args).result()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="resnet18,densenet")
    parser.add_argument("--sides", default="96,64,48")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2, help="steps left out before timing (kernel building)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--allocator-only", action="store_true",
                        help="only bf16 autocast + channels-last, with freed memory kept in the heap and without")
    parser.add_argument("--eval-batches", help="comma-separated batch sizes: measure scoring (forward only) instead")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}; steady state: "
          f"the median of {args.steps} steps after {args.warmup} warm-up steps")
    for arch, side in itertools.product(args.archs.split(","), map(int, args.sides.split(","))):
        if args.eval_batches:
            for batch in map(int, args.eval_batches.split(",")):
                rate = in_a_fresh_process(scored_images_per_s, arch, side, batch, args.steps, args.warmup)
                print(f"{arch:9s} side {side:3d}  scoring at batch {batch:5d}  {rate:7.1f} img/s  "
                      f"(10,000 test images: {10000 / rate:.0f} s)", flush=True)
            continue
        base = None
        settings = (((True, True, True), (True, True, False)) if args.allocator_only else
                    ((False, False, True), (True, False, True), (False, True, True), (True, True, True),
                     (True, True, False)))
        for bf16, cl, keep_heap in settings:
            rate, system = in_a_fresh_process(images_per_s, arch, side, bf16, cl, args.steps, args.batch, args.warmup, keep_heap)
            base = base or rate
            malloc = "heap kept" if keep_heap else "glibc default"
            print(f"{arch:9s} side {side:3d}  bf16={bf16!s:5s} channels_last={cl!s:5s} {malloc:13s} "
                  f"{rate:7.1f} img/s  ×{rate / base:.2f}  system time {system:4.0%}  "
                  f"(one epoch of 60,000 images: {60000 / rate / 60:.0f} min)", flush=True)


if __name__ == "__main__":
    main()
