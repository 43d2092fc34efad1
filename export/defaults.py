"""Rebuild the default model repository from scratch: train, then export, the shipped models.

    python -m export.defaults [--out model_repository] [--epochs 10] [--seed 0]

Trains `lenet` and `lenet_bn` with the modern recipe on the CPU, exports each with all its
feature maps as version 1, and replaces `<out>/<arch>` only once its new export has passed every
check. The result is what `python -m server` serves with no arguments.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from export.onnx import export
from models.data import load_fashion_mnist
from models.recipes import make_config
from models.train import run

DEFAULT_MODELS = ("lenet", "lenet_bn")


def rebuild(out: Path, *, epochs: int = 10, seed: int = 0, data_dir: str | None = None,
            checkpoints: Path = Path("checkpoints"), progress: bool = True) -> None:
    data = load_fashion_mnist(data_dir)
    out.mkdir(parents=True, exist_ok=True)
    for arch in DEFAULT_MODELS:
        started = time.perf_counter()
        config = make_config(arch, "modern", epochs=epochs, seed=seed, device="cpu")
        checkpoint = run(config, data, checkpoints, progress=progress)
        with tempfile.TemporaryDirectory(dir=out, prefix=".rebuild-") as staging:
            export(arch, Path(staging), checkpoint=str(checkpoint), version=1, data_dir=data_dir)
            target = out / arch
            if target.exists():
                shutil.rmtree(target)
            (Path(staging) / arch).rename(target)
        print(f"{arch}: rebuilt in {time.perf_counter() - started:.0f} s -> {out / arch}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m export.defaults", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("model_repository"))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", help="Fashion-MNIST directory")
    parser.add_argument("--checkpoints", type=Path, default=Path("checkpoints"))
    args = parser.parse_args(argv)
    rebuild(args.out, epochs=args.epochs, seed=args.seed, data_dir=args.data_dir, checkpoints=args.checkpoints)


if __name__ == "__main__":
    main()
