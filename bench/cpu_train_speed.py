"""Training throughput (images/s) on this CPU for each speed-up, measured side by side in one run.

    python bench/cpu_train_speed.py [--archs resnet18,densenet] [--sides 96,64,48] [--steps 6]

Each cell is `--steps` SGD steps of batch 128 after `--warmup` steps (oneDNN builds its kernels in the
first steps, which run several times slower): fp32 vs bf16 autocast, contiguous vs channels-last, at
each input side. Each step is timed alone and the cell reports the steady state, the median step after
warm-up, as images/s and the ratio to fp32/contiguous.
"""
import argparse
import itertools
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import models  # noqa: E402,F401  (registers the architectures)
from models.registry import create_model  # noqa: E402


def images_per_s(arch: str, side: int, bf16: bool, channels_last: bool, steps: int, batch: int,
                 warmup: int = 2) -> float:
    """Images per second of the median step after `warmup` steps."""
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = create_model(arch).to(memory_format=fmt).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 1, side, side).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (batch,))
    loss_fn = nn.CrossEntropyLoss()
    seconds = []
    for _ in range(warmup + steps):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seconds.append(time.perf_counter() - start)
    return batch / statistics.median(seconds[warmup:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="resnet18,densenet")
    parser.add_argument("--sides", default="96,64,48")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2, help="steps left out before timing (kernel building)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--bf16-only", action="store_true", help="only bf16 autocast, contiguous (a quick estimate)")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}; steady state: "
          f"the median of {args.steps} steps after {args.warmup} warm-up steps")
    for arch, side in itertools.product(args.archs.split(","), map(int, args.sides.split(","))):
        base = None
        settings = ((True, False),) if args.bf16_only else ((False, False), (True, False), (False, True), (True, True))
        for bf16, cl in settings:
            rate = images_per_s(arch, side, bf16, cl, args.steps, args.batch, args.warmup)
            base = base or rate
            print(f"{arch:9s} side {side:3d}  bf16={bf16!s:5s} channels_last={cl!s:5s}  "
                  f"{rate:7.1f} img/s  ×{rate / base:.2f}  (one epoch of 60,000 images: {60000 / rate / 60:.0f} min)",
                  flush=True)


if __name__ == "__main__":
    main()
