"""Rebuild the default model repository: every architecture with shipped weights, as version 1.

    python -m export.defaults [--out model_repository]                  # from the shipped weights, minutes
    python -m export.defaults --missing [--out model_repository]        # only what is not built yet
    python -m export.defaults --retrain [--archs lenet,lenet_bn] [--epochs N] [--seed N]

By default each architecture in `models.list_models(trained=True)` is exported from its shipped
weights (models/weights/) with all its feature maps. With --retrain, each is first trained from
scratch with the recipe its shipped weights record (on this machine's default device), and that
checkpoint is exported; `python -m models.pretrained publish CHECKPOINT` then ships new weights.
`<out>/<arch>` is replaced only once its new export has passed every check. The result is what
`python -m server` serves with no arguments. With --missing, only the models that `<out>` lacks (or
holds built from older shipped weights) are built: what `python -m server` runs on its first start
for the models that ship as weights only (cnnserve/default_repository.py).
"""
from __future__ import annotations

import argparse
import fcntl
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from cnnserve.entry import DefaultsHelpFormatter, exit_if_missing, program_name

with exit_if_missing("train"):
    from cnnserve.default_repository import LOCK_FILE, models_to_build
    from cnnserve.fashion_mnist import load_fashion_mnist
    from export.onnx import ExportError, export
    from models.pretrained import get_weights
    from models.recipes import TrainConfig
    from models.registry import list_models
    from models.train import run


def replace_model(out: Path, arch: str, build) -> None:
    """Build `arch` into a staging repository inside `out`, then swap it in for `<out>/<arch>`."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out, prefix=".rebuild-") as staging:
        build(Path(staging))
        target = out / arch
        if target.exists():
            shutil.rmtree(target)
        (Path(staging) / arch).rename(target)


def rebuild(out: Path, archs: list[str], *, retrain: bool = False, epochs: int | None = None, seed: int | None = None,
            data_dir: str | None = None, checkpoints: Path = Path("checkpoints"), progress: bool = True) -> None:
    data = load_fashion_mnist(data_dir) if retrain else None
    for arch in archs:
        started = time.perf_counter()
        if retrain:
            recorded = TrainConfig(**get_weights(arch).config)
            config = replace(recorded, device="auto", **{k: v for k, v in (("epochs", epochs), ("seed", seed)) if v is not None})
            if config.low_res_epochs > config.epochs:
                config = replace(config, low_res_epochs=config.epochs // 2)
            checkpoint = run(config, data, checkpoints, progress=progress)
            replace_model(out, arch, lambda staging: export(arch, staging, checkpoint=str(checkpoint), version=1,
                                                            data_dir=data_dir))
        else:
            replace_model(out, arch, lambda staging: export(arch, staging, shipped=True, version=1, data_dir=data_dir))
        print(f"{arch}: rebuilt in {time.perf_counter() - started:.0f} s -> {out / arch}", flush=True)


def build_missing(out: Path, archs: list[str], data_dir: str | None = None) -> None:
    """Build the models `models_to_build` lists, one process at a time (a lock in `out`): a second server
    started meanwhile waits, then finds them built."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / LOCK_FILE, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        todo = models_to_build(out, archs)
        for number, (arch, why) in enumerate(todo.items(), 1):
            weights = get_weights(arch)
            print(f"[{number}/{len(todo)}] {arch}: {why}; building {out / arch}/1 from models/weights/{weights.file} "
                  f"({weights.dtype}, {weights.size_bytes / 1e6:.1f} MB): ONNX export, checks, parity with PyTorch…",
                  flush=True)
            rebuild(out, [arch], data_dir=data_dir)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=program_name(), description=__doc__.splitlines()[0],
                                     formatter_class=DefaultsHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("model_repository"))
    parser.add_argument("--archs", help="comma-separated (default: every architecture with shipped weights: "
                        f"{', '.join(list_models(trained=True))})")
    parser.add_argument("--missing", action="store_true", help="build only the models --out lacks or holds built from "
                        "older shipped weights (what `python -m server` does on first start)")
    parser.add_argument("--retrain", action="store_true", help="train from scratch first, with the recorded recipe")
    parser.add_argument("--epochs", type=int, help="with --retrain: override the recorded epochs")
    parser.add_argument("--seed", type=int, help="with --retrain: override the recorded seed")
    parser.add_argument("--data-dir", help="Fashion-MNIST directory")
    parser.add_argument("--checkpoints", type=Path, default=Path("checkpoints"))
    args = parser.parse_args(argv)
    archs = args.archs.split(",") if args.archs else list_models(trained=True)
    unknown = [a for a in archs if a not in list_models(trained=True)]
    if unknown:
        parser.exit(2, f"error: no shipped weights for {', '.join(unknown)}; shipped: {', '.join(list_models(trained=True))}\n")
    if args.missing and args.retrain:
        parser.error("--missing builds from the shipped weights; it does not go with --retrain")
    try:
        if args.missing:
            build_missing(args.out, archs, args.data_dir)
            return
        rebuild(args.out, archs, retrain=args.retrain, epochs=args.epochs, seed=args.seed, data_dir=args.data_dir,
                checkpoints=args.checkpoints)
    except ExportError as error:
        parser.exit(1, f"error: {error}\n")


if __name__ == "__main__":
    main()
