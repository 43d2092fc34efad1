"""The book's recipe against ours, per seed, on this machine's CPU.

    python bench/recipes.py [--archs lenet,lenet_bn] [--seeds 0,1,2] [--epochs 10] [--out bench/results]

Prints a table (test accuracy per seed, mean and min, minutes per run) next to the book's
printed numbers and writes it as JSON.
"""
import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cnnserve.fashion_mnist import load_fashion_mnist  # noqa: E402
from models.recipes import BOOK_PRINTED, make_config  # noqa: E402
from models.train import train  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="lenet,lenet_bn")
    parser.add_argument("--recipes", default="book,modern")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data-dir")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    data = load_fashion_mnist(args.data_dir)
    rows = []
    for arch in args.archs.split(","):
        for recipe in args.recipes.split(","):
            runs = []
            for seed in map(int, args.seeds.split(",")):
                config = make_config(arch, recipe, epochs=args.epochs, seed=seed, device=args.device)
                _, metrics = train(config, data, progress=False)
                runs.append({"seed": seed, "test_acc": metrics["test_acc"], "minutes": metrics["train_seconds"] / 60,
                             "images_per_s": statistics.mean(r["images_per_s"] for r in metrics["history"])})
                print(f"RUN {arch} {recipe} seed {seed}: {runs[-1]}", flush=True)
            accuracies = [r["test_acc"] for r in runs]
            rows.append({"arch": arch, "recipe": recipe, "runs": runs, "mean": statistics.mean(accuracies),
                         "min": min(accuracies), "minutes_per_run": statistics.mean(r["minutes"] for r in runs),
                         "book_printed": BOOK_PRINTED[arch]})
    print("\n| arch | recipe | test acc per seed | mean | min | min/run | book zh / en / best printed |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        seeds = " ".join(f"{r['test_acc']:.4f}" for r in row["runs"])
        book = " / ".join(f"{v:.3f}" for v in row["book_printed"])
        print(f"| {row['arch']} | {row['recipe']} | {seeds} | {row['mean']:.4f} | {row['min']:.4f} | "
              f"{row['minutes_per_run']:.1f} | {book} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"recipes-{args.device}.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
