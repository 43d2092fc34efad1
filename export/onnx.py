"""Export a model to ONNX, verify it, and write it into a model repository.

    python -m export.onnx --arch resnet18 [--checkpoint PATH | --random-init] [--out model_repository]

Every export is checked (onnx.checker with full check, an ONNX Runtime CPU session, parity with
PyTorch on real Fashion-MNIST test images at batch 1 and 7); if any check fails, the export fails
and no version directory is left behind.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata as package_metadata
from pathlib import Path

import onnx
import onnxruntime as ort
import torch

from export.graph import INPUT_NAME, ServingGraph, export_graph
from export.parity import ParityError, check_parity
from export.repository import (METADATA_FILE, MODEL_FILE, model_config, next_version, staged_version,
                               write_model_files)
from models.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint
from models.data import CLASSES, IMAGE_SIDE, DataError, load_split
from models.registry import TapNet, create_model, list_models

DEFAULT_OPSET = 20
PARITY_BATCH_SIZES = (1, 7)


class ExportError(RuntimeError):
    pass


@dataclass
class Source:
    """What is exported: a model in eval mode and where it came from (None: untrained)."""
    model: TapNet
    checkpoint: dict | None


def resolve_source(arch: str, checkpoint: str | None, random_init: bool, checkpoints_dir: Path) -> Source:
    if arch not in list_models():
        raise ExportError(f"unknown architecture {arch!r}; choose one of {', '.join(list_models())}")
    if random_init:
        torch.manual_seed(0)
        return Source(create_model(arch).eval(), None)
    path = Path(checkpoint) if checkpoint else latest_checkpoint(arch, checkpoints_dir)
    if path is None:
        raise ExportError(f"no checkpoint of {arch} in {checkpoints_dir}/{arch}/. Train one with "
                          f"`python -m models.train --arch {arch}`, pass --checkpoint PATH, or pass "
                          f"--random-init for an untrained export")
    try:
        model, loaded = load_checkpoint(path)
    except CheckpointError as error:
        raise ExportError(str(error)) from None
    if loaded["config"]["arch"] != arch:
        raise ExportError(f"{path} is a checkpoint of {loaded['config']['arch']!r}, not of {arch!r}")
    return Source(model, loaded)


def select_features(model: TapNet, spec: str) -> list[str]:
    names = [tap.name for tap in model.feature_info]
    if spec == "all":
        return names
    if spec == "none":
        return []
    wanted = [name.strip() for name in spec.split(",") if name.strip()]
    unknown = [name for name in wanted if name not in names]
    if unknown:
        raise ExportError(f"unknown feature taps {unknown}; {model.__class__.__name__} has {', '.join(names)}")
    return [name for name in names if name in wanted]   # keep the model's order


def exporter_versions() -> dict[str, str]:
    return {name: package_metadata.version(name) for name in ("torch", "onnx", "onnxscript", "onnxruntime")}


def build_metadata(arch: str, version: int, source: Source, model_path: Path, output_shapes: dict[str, list[int]],
                   parity: dict, opset: int) -> dict:
    """Everything a server or a person needs to know about one exported version."""
    checkpoint = source.checkpoint
    config = checkpoint["config"] if checkpoint else {}
    return {
        "arch": arch, "version": version, "trained": checkpoint is not None,
        "input": {"name": INPUT_NAME, "dtype": "uint8", "shape": [-1, 1, IMAGE_SIDE, IMAGE_SIDE]},
        "preprocessing": {"scale": "pixel / 255", "resize": {"side": source.model.input_side, "mode": "bilinear",
                                                             "align_corners": False},
                          "mean": config.get("mean"), "std": config.get("std")},
        "labels": list(CLASSES),
        "outputs": [{"name": name, "dtype": "float32", "shape": [-1, *dims]} for name, dims in output_shapes.items()],
        "model_file": model_path.name,
        "sha256": hashlib.sha256(model_path.read_bytes()).hexdigest(),
        "size_bytes": model_path.stat().st_size,
        "test_acc": checkpoint["metrics"]["test_acc"] if checkpoint else None,
        "checkpoint": None if checkpoint is None else {
            "path": checkpoint["path"], "sha256": checkpoint["sha256"], "recipe": config["recipe"], "config": config,
            "metrics": {k: v for k, v in checkpoint["metrics"].items() if k != "history"}},
        "opset": opset, "exporter": exporter_versions(), "parity": parity,
        "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def export(arch: str, out: Path, *, checkpoint: str | None = None, random_init: bool = False,
           version: int | None = None, opset: int = DEFAULT_OPSET, features: str = "all",
           checkpoints_dir: Path = Path("checkpoints"), data_dir: str | None = None) -> Path:
    """Export, verify and write one model; return its version directory."""
    started = time.perf_counter()
    source = resolve_source(arch, checkpoint, random_init, checkpoints_dir)
    config = source.checkpoint["config"] if source.checkpoint else {}
    graph = ServingGraph(source.model, select_features(source.model, features), config.get("mean"), config.get("std"))
    model_dir = out / arch
    version = version or next_version(model_dir)
    with staged_version(model_dir, version) as staging:
        try:
            test_images, _ = load_split(data_dir, "test")
        except DataError as error:
            raise ExportError(f"parity needs the Fashion-MNIST test images: {error}") from None
        parity_batches = [test_images[:n, None].copy() for n in PARITY_BATCH_SIZES]
        model_path = staging / MODEL_FILE
        export_graph(graph, model_path, opset)
        onnx.checker.check_model(str(model_path), full_check=True)
        session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
        parity = check_parity(graph, session, parity_batches)
        output_shapes = {o.name: list(o.shape[1:]) for o in session.get_outputs()}
        metadata = build_metadata(arch, version, source, model_path, output_shapes, parity, opset)
        metadata["export_seconds"] = round(time.perf_counter() - started, 2)
        (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=2))
    write_model_files(model_dir, model_config(arch, [1, IMAGE_SIDE, IMAGE_SIDE], output_shapes), list(CLASSES))
    worst = max(parity["outputs"].values(), key=lambda o: o["max_abs"])
    print(f"{arch} v{version}: {metadata['size_bytes'] / 1e6:.1f} MB, {len(output_shapes)} outputs, "
          f"parity ok (worst max abs {worst['max_abs']:.2e}, max rel {worst['max_rel']:.2e}), "
          f"{'trained, test acc ' + format(metadata['test_acc'], '.4f') if metadata['trained'] else 'UNTRAINED'}, "
          f"{metadata['export_seconds']:.1f} s -> {model_dir / str(version)}")
    return model_dir / str(version)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m export.onnx", description=__doc__.splitlines()[0])
    parser.add_argument("--arch", required=True, help=f"one of {', '.join(list_models())}, or 'all'")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", help="checkpoint file (default: the newest in --checkpoints/<arch>/)")
    source.add_argument("--random-init", action="store_true", help="export an untrained model (marked in the metadata)")
    parser.add_argument("--checkpoints", type=Path, default=Path("checkpoints"), help="where to look for checkpoints")
    parser.add_argument("--out", type=Path, default=Path("model_repository"))
    parser.add_argument("--version", type=int, help="version number (default: one above the newest)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    parser.add_argument("--features", default="all", help="feature taps to output: all, none, or name,name")
    parser.add_argument("--data-dir", help="Fashion-MNIST directory, for the parity check")
    args = parser.parse_args(argv)

    archs = list_models() if args.arch == "all" else [args.arch]
    if args.checkpoint and len(archs) > 1:
        parser.error("--checkpoint names one file; use it with one --arch")
    for arch in archs:
        try:
            export(arch, args.out, checkpoint=args.checkpoint, random_init=args.random_init, version=args.version,
                   opset=args.opset, features=args.features, checkpoints_dir=args.checkpoints, data_dir=args.data_dir)
        except (ExportError, FileExistsError) as error:
            parser.exit(1, f"error: {error}\n")
        except (ParityError, onnx.checker.ValidationError) as error:
            parser.exit(1, f"error: {arch} failed verification; nothing was written:\n{error}\n")
        except OSError as error:
            parser.exit(1, f"error: cannot write the model repository at {args.out}: {error}\n")


if __name__ == "__main__":
    main()
