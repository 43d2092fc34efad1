"""Which peak learning rate trains VGG-11 fastest: short runs side by side on a slice of the data.

    python bench/vgg11_recipe.py [--images 12800] [--variants all]

VGG-11 (no batch norm, a 7 × 7 head fixed at 224 px) is the zoo's slowest model on this CPU
(~105 img/s alone); its 8-epoch modern-cpu run underfit (training accuracy 0.916 below the test
set's 0.9285). Each variant is the modern-cpu recipe with one change, trained for one one-cycle
"epoch" over the first `--images` training images at 224 px; the table reports accuracy on the
first 2,000 test images and the last training loss, so a faster learner or a divergence shows in
minutes instead of a 100-minute run.
"""
import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import models  # noqa: E402,F401  (registers the architectures)
from cnnserve.fashion_mnist import load_fashion_mnist  # noqa: E402
from models.recipes import make_config  # noqa: E402
from models.train import train  # noqa: E402

# name -> what changes in the modern-cpu config
VARIANTS = {
    "recipe (peak lr 0.02)": {},
    "peak lr 0.03": {"lr": 0.03},
    "peak lr 0.045": {"lr": 0.045},
    "batch 64 (peak lr 0.02)": {"batch_size": 64},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=12_800, help="training images (one one-cycle epoch)")
    parser.add_argument("--test-images", type=int, default=2_000)
    parser.add_argument("--variants", default="all", help="comma-separated names from the table (they hold no commas), or all")
    parser.add_argument("--data-dir")
    args = parser.parse_args()
    full = load_fashion_mnist(args.data_dir)
    data = replace(full, train_images=full.train_images[:args.images], train_labels=full.train_labels[:args.images],
                   test_images=full.test_images[:args.test_images], test_labels=full.test_labels[:args.test_images])
    chosen = VARIANTS if args.variants == "all" else {k: VARIANTS[k] for k in args.variants.split(",")}
    base = replace(make_config("vgg11", "modern-cpu"), epochs=1, device="cpu")
    print(f"vgg11, one one-cycle epoch over {args.images:,} images at 224 px, "
          f"modern-cpu recipe with one change per row; accuracy on {args.test_images:,} test images")
    print(f"{'variant':<36} {'test acc':>8} {'train loss':>10} {'img/s':>6} {'min':>5}")
    for name, changes in chosen.items():
        start = time.perf_counter()
        _, metrics = train(replace(base, **changes), data, progress=False)
        last = metrics["history"][-1]
        print(f"{name:<36} {metrics['test_acc']:>8.4f} {last['loss']:>10.4f} {last['images_per_s']:>6.0f} "
              f"{(time.perf_counter() - start) / 60:>5.1f}", flush=True)


if __name__ == "__main__":
    main()
