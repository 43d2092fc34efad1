"""Why NiN stalls, and which recipe trains it: short low-resolution runs side by side.

    python bench/nin_recipe.py [--side 80] [--epochs 1] [--variants all]

NiN's last block ends in a ReLU before the global average pool, so each logit is the mean of a
non-negative map: a class channel whose ReLU dies (zero for every image) is stuck at logit 0 and its
class is never predicted, whatever the rest learns. Each variant below is the modern-cpu recipe with
one change, trained `--epochs` epochs at `--side` px (NiN ends in global pooling, so it trains at any
side from 67 up); the table reports test accuracy at that side, the class channels that are dead on
the whole test set, and the classes never predicted.
"""
import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import models  # noqa: E402,F401  (registers the architectures)
from cnnserve.fashion_mnist import load_fashion_mnist  # noqa: E402
from models.builders import build_model  # noqa: E402
from models.data import batches, to_model_input  # noqa: E402
from models.recipes import make_config  # noqa: E402
from models.train import train  # noqa: E402


def without_final_relu():
    model = build_model("nin")
    model.stages.nin4[-1] = nn.Identity()     # logits may go negative; no class channel can die
    return model


def with_zero_biases():
    """The book's nin with every conv's bias at zero (PyTorch's default: uniform in ±1/sqrt(fan_in))."""
    model = build_model("nin")
    for conv in (m for m in model.modules() if isinstance(m, nn.Conv2d)):
        nn.init.zeros_(conv.bias)
    return model


# name -> (what changes in the config, a model builder or None for the registered nin)
VARIANTS = {
    "recipe (lr 0.05, smoothing 0.1, xavier)": ({}, None),
    "no final ReLU": ({}, without_final_relu),
    "peak lr 0.01": ({"lr": 0.01}, None),
    "no label smoothing": ({"label_smoothing": 0.0}, None),
    "pytorch default init": ({"init": "default"}, None),
    "no final ReLU + peak lr 0.1": ({"lr": 0.1}, without_final_relu),
    "kaiming init": ({"init": "kaiming"}, None),
    "kaiming init + no label smoothing": ({"init": "kaiming", "label_smoothing": 0.0}, None),
    "kaiming init + peak lr 0.1": ({"init": "kaiming", "lr": 0.1}, None),
    "zero biases": ({}, with_zero_biases),
    "class-channel biases 0.5 (the recipe now)": ({"class_bias": 0.5}, None),
}


@torch.no_grad()
def class_channel_health(model, data, config) -> tuple[int, int]:
    """(class channels zero on every test image, classes never predicted) at the config's side."""
    model.eval()
    x_all = torch.from_numpy(data.test_images)
    y_all = torch.from_numpy(data.test_labels).long()
    peak = torch.zeros(10)
    predicted = torch.zeros(10, dtype=torch.bool)
    for x, _ in batches(x_all, y_all, 1000, shuffle=False):
        logits = model(to_model_input(x, config.side, config.mean, config.std)).float()
        peak = torch.maximum(peak, logits.abs().amax(0))
        predicted[logits.argmax(1)] = True
    return int((peak == 0).sum()), int((~predicted).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=80)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--variants", default="all", help="comma-separated names from the table, or all")
    parser.add_argument("--data-dir")
    args = parser.parse_args()
    data = load_fashion_mnist(args.data_dir)
    chosen = VARIANTS if args.variants == "all" else {k: VARIANTS[k] for k in args.variants.split(",")}
    # the recipe as it was before the class channels' bias (class_bias) was added to it
    base = replace(make_config("nin", "modern-cpu"), side=args.side, epochs=args.epochs, class_bias=None,
                   low_res_side=None, low_res_epochs=0, cpu_bf16=True, device="cpu")
    print(f"nin, {args.epochs} epochs at {args.side} px, modern-cpu recipe with one change per row")
    print(f"{'variant':<42} {'test acc':>8} {'dead class channels':>20} {'never predicted':>16} {'min':>5}")
    for name, (changes, builder) in chosen.items():
        config = replace(base, **changes)
        start = time.perf_counter()
        model, metrics = train(config, data, progress=False, model=builder() if builder else None)
        dead, unpredicted = class_channel_health(model, data, config)
        print(f"{name:<42} {metrics['test_acc']:>8.4f} {dead:>20} {unpredicted:>16} "
              f"{(time.perf_counter() - start) / 60:>5.1f}", flush=True)


if __name__ == "__main__":
    main()
