"""Export a model to ONNX, verify it, and write it into a model repository.

    python -m export.onnx --arch resnet18 [--checkpoint PATH | --random-init] [--out REPOSITORY]
    python -m export.onnx --arch resnet18 --quantize int8     # resnet18_int8, into exports/int8/

The weights come from --checkpoint, else the newest local checkpoint, else the shipped trained
weights (models/weights/). Exports go to a build directory, never into the shipped default
repository (`model_repository/`, which only `python -m export.defaults` writes): trained ones to
exports/trained/, --random-init ones to exports/untrained/, --quantize ones (a model of their own,
`<arch>_int8`: export/quantize.py) to exports/int8/. Serve one with
`python -m server --model-repository exports/trained`.

Every export is checked (onnx.checker with full check, an ONNX Runtime CPU session, parity with
PyTorch on real Fashion-MNIST test images at batch 1 and 7); if any check fails, the export fails
and no version directory is left behind.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from importlib import metadata as package_metadata
from pathlib import Path

from cnnserve.entry import DefaultsHelpFormatter, exit_if_missing, program_name

with exit_if_missing("train"):
    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch
    from PIL import Image

    from cnnserve.fashion_mnist import DataError, has_split, load_split, resolve_data_dir
    from cnnserve.metadata import ModelMetadata, TensorInfo
    from cnnserve.spec import CLASSES, IMAGE_SIDE, INPUT_NAME, Preprocessing, UnknownFeatures, select_features, sha256_file
    from export.graph import ServingGraph, export_graph
    from export.parity import ParityError, check_parity
    from export.quantize import CALIBRATION_IMAGES, DEFAULT_THRESHOLDS, QuantizationError, Thresholds, quantize_and_check
    from export.repository import METADATA_FILE, MODEL_FILE, model_config, next_version, staged_version, write_model_files
    from models.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint
    from models.pretrained import WEIGHTS_NAME, WeightsError, get_weights, list_weights
    from models.recipes import how_to_train
    from models.registry import TapNet, create_model, list_models

DEFAULT_OPSET = 20
TRAINED_OUT = Path("exports/trained")       # where trained exports go unless --out says otherwise
UNTRAINED_OUT = Path("exports/untrained")   # where random-init exports go unless --out says otherwise
QUANTIZED_OUT = Path("exports/int8")        # where trained --quantize exports go unless --out says otherwise
PARITY_BATCH_SIZES = (1, 7)
EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"


class ExportError(RuntimeError):
    pass


@dataclass
class Source:
    """What is exported: a model in eval mode and where it came from (None: untrained)."""
    model: TapNet
    checkpoint: dict | None

    @property
    def preprocessing(self) -> Preprocessing:
        """As training did it (the record the checkpoint carries; older checkpoints: their config);
        untrained: the model's side, no normalisation."""
        if self.checkpoint is None:
            return Preprocessing(side=self.model.input_side)
        if "preprocessing" in self.checkpoint:
            return Preprocessing(**self.checkpoint["preprocessing"])
        config = self.checkpoint["config"]
        return Preprocessing(side=config["side"], mean=config.get("mean"), std=config.get("std"))


def resolve_source(arch: str, checkpoint: str | None, random_init: bool, checkpoints_dir: Path,
                   shipped: bool = False) -> Source:
    if arch not in list_models():
        raise ExportError(f"unknown architecture {arch!r}; choose one of {', '.join(list_models())}")
    if shipped:
        return shipped_source(arch)
    if random_init:
        torch.manual_seed(0)
        return Source(create_model(arch).eval(), None)
    path = Path(checkpoint) if checkpoint else latest_checkpoint(arch, checkpoints_dir)
    if path is None:
        if arch in list_weights():
            return shipped_source(arch)
        raise ExportError(f"no checkpoint of {arch} in {checkpoints_dir}/{arch}/ and no shipped weights for it. "
                          f"Train one with {how_to_train(arch)}, pass --checkpoint PATH, or pass "
                          f"--random-init for an untrained export (written to {UNTRAINED_OUT}/)")
    try:
        model, loaded = load_checkpoint(path)
    except CheckpointError as error:
        raise ExportError(str(error)) from None
    if loaded["config"]["arch"] != arch:
        raise ExportError(f"{path} is a checkpoint of {loaded['config']['arch']!r}, not of {arch!r}")
    return Source(model, loaded)


def shipped_source(arch: str) -> Source:
    """The shipped trained weights, described like a checkpoint (config, metrics, path, sha256)."""
    try:
        weights = get_weights(arch)
        model = create_model(arch, weights=WEIGHTS_NAME)
    except WeightsError as error:
        raise ExportError(str(error)) from None
    metrics = {"test_acc": weights.test_acc_stored, "test_acc_fp32": weights.test_acc, "epochs": weights.epochs,
               "train_seconds": weights.train_seconds, "wall_seconds": weights.wall_seconds, "device": weights.device}
    config = weights.config
    preprocessing = {"side": config["side"], "mean": config.get("mean"), "std": config.get("std")}
    return Source(model, {"config": config, "preprocessing": preprocessing, "metrics": metrics,
                          "sha256": weights.sha256, "path": f"models/weights/{weights.file}"})


def holds_trained_version(model_dir: Path) -> bool:
    """Whether any version under `model_dir` is a trained export (an unreadable metadata file counts as not)."""
    for path in model_dir.glob("[0-9]*/" + METADATA_FILE):
        try:
            if json.loads(path.read_text()).get("trained"):
                return True
        except (OSError, ValueError):
            continue
    return False


def feature_outputs(model: TapNet, spec: str) -> list[str]:
    """--features: "all", "none" or "name,name" -> the taps to output, in the model's order."""
    requested = [] if spec == "none" else [name.strip() for name in spec.split(",") if name.strip()]
    try:
        return select_features([tap.name for tap in model.feature_info], requested)
    except UnknownFeatures as error:
        raise ExportError(f"--features: {error}") from None


def parity_images(data_dir: str | None) -> np.ndarray:
    """Real test images for the parity check: Fashion-MNIST's test split when it is here, else the
    shipped examples (ten test images saved as PNG), so an export never needs a download."""
    if data_dir or has_split(resolve_data_dir(), "test"):
        try:
            return load_split(data_dir, "test")[0]
        except DataError as error:
            raise ExportError(f"parity needs the Fashion-MNIST test images: {error}") from None
    examples = sorted(EXAMPLES_DIR.glob("[0-9]-*.png"))
    if not examples:
        raise ExportError(f"parity needs real images: no Fashion-MNIST in {resolve_data_dir()} and no examples "
                          f"in {EXAMPLES_DIR}; pass --data-dir or set FASHION_MNIST_DIR")
    images = np.stack([np.asarray(Image.open(path).convert("L")) for path in examples])
    return np.concatenate([images] * -(-max(PARITY_BATCH_SIZES) // len(images)))


def exporter_versions() -> dict[str, str]:
    return {name: package_metadata.version(name) for name in ("torch", "onnx", "onnxscript", "onnxruntime")}


def build_metadata(arch: str, version: int, source: Source, model_path: Path, output_shapes: dict[str, list[int]],
                   parity: dict, opset: int, **extra) -> ModelMetadata:
    """Everything a server or a person needs to know about one exported version."""
    checkpoint = source.checkpoint
    config = checkpoint["config"] if checkpoint else {}
    return ModelMetadata(
        arch=arch, version=version, trained=checkpoint is not None,
        input=TensorInfo(INPUT_NAME, "uint8", (-1, 1, IMAGE_SIDE, IMAGE_SIDE)),
        preprocessing=source.preprocessing,
        labels=CLASSES,
        outputs=tuple(TensorInfo(name, "float32", (-1, *dims)) for name, dims in output_shapes.items()),
        model_file=model_path.name,
        sha256=sha256_file(model_path),
        size_bytes=model_path.stat().st_size,
        test_acc=checkpoint["metrics"]["test_acc"] if checkpoint else None,
        checkpoint=None if checkpoint is None else {
            "path": checkpoint["path"], "sha256": checkpoint["sha256"], "recipe": config["recipe"], "config": config,
            "metrics": {k: v for k, v in checkpoint["metrics"].items() if k != "history"}},
        opset=opset, exporter=exporter_versions(), parity=parity,
        exported_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **extra,
    )


def export(arch: str, out: Path, *, checkpoint: str | None = None, random_init: bool = False,
           version: int | None = None, opset: int = DEFAULT_OPSET, features: str = "all",
           checkpoints_dir: Path = Path("checkpoints"), data_dir: str | None = None, force: bool = False,
           shipped: bool = False, quantize: str | None = None, calibration_images: int = CALIBRATION_IMAGES,
           thresholds: Thresholds = DEFAULT_THRESHOLDS) -> Path:
    """Export, verify and write one model; return its version directory.

    An untrained export never lands beside trained versions (where the server would serve it as
    the newest) unless `force`. `quantize="int8"`: the verified fp32 graph is quantized and written
    as the model `<arch>_int8`, after its own parity check (`export.quantize`).
    """
    started = time.perf_counter()
    source = resolve_source(arch, checkpoint, random_init, checkpoints_dir, shipped)
    graph = ServingGraph(source.model, feature_outputs(source.model, features), source.preprocessing)
    name = f"{arch}_{quantize}" if quantize else arch
    model_dir = out / name
    if source.checkpoint is None and not force and holds_trained_version(model_dir):
        raise ExportError(f"{model_dir} holds trained versions, and the server serves the newest version: an "
                          f"untrained export there would replace them. Write it elsewhere with --out (the "
                          f"default for --random-init is {UNTRAINED_OUT}/), or pass --force")
    version = version or next_version(model_dir)
    with staged_version(model_dir, version) as staging:
        test_images = parity_images(data_dir)
        parity_batches = [test_images[:n, None].copy() for n in PARITY_BATCH_SIZES]
        model_path = staging / MODEL_FILE
        fp32_path = staging / "fp32.onnx" if quantize else model_path
        export_graph(graph, fp32_path, opset)
        onnx.checker.check_model(str(fp32_path), full_check=True)
        session = ort.InferenceSession(str(fp32_path), providers=["CPUExecutionProvider"])
        parity = check_parity(graph, session, parity_batches)
        output_shapes = {o.name: list(o.shape[1:]) for o in session.get_outputs()}
        if quantize:
            quantization, int8_parity = quantize_and_check(name, session, fp32_path, model_path, data_dir=data_dir,
                                                           calibration_images=calibration_images, thresholds=thresholds,
                                                           trained=source.checkpoint is not None)
            parity = {**int8_parity, "fp32_vs_pytorch": parity}
            fp32_path.unlink()
        metadata = build_metadata(arch, version, source, model_path, output_shapes, parity, opset,
                                  export_seconds=round(time.perf_counter() - started, 2))
        if quantize:
            metadata = replace(metadata, quantization=quantization,
                               # what this model scores; fp32's stays in checkpoint.metrics
                               test_acc=parity["int8_accuracy"] if source.checkpoint else None)
        (staging / METADATA_FILE).write_text(json.dumps(metadata.to_json(), indent=2))
    write_model_files(model_dir, model_config(name, [1, IMAGE_SIDE, IMAGE_SIDE], output_shapes), list(CLASSES))
    if quantize:
        summary = (f"int8 parity {'ok' if parity['gated'] else 'not required (untrained)'}: top-1 agreement "
                   f"{parity['top1_agreement']:.2%} with fp32 on {parity['test_images']} test images, accuracy "
                   f"{parity['int8_accuracy']:.4f} vs {parity['fp32_accuracy']:.4f}, calibrated on "
                   f"{quantization['calibration']['images']} training images")
    else:
        worst = max(parity["outputs"].values(), key=lambda o: o["max_abs"])
        summary = f"parity ok (worst max abs {worst['max_abs']:.2e}, max rel {worst['max_rel']:.2e})"
    print(f"{name} v{version}: {metadata.size_bytes / 1e6:.1f} MB, {len(output_shapes)} outputs, {summary}, "
          f"{'trained, test acc ' + format(metadata.test_acc, '.4f') if metadata.trained else 'UNTRAINED'}"
          f"{' (' + source.checkpoint['path'] + ')' if source.checkpoint else ''}, "
          f"{metadata.export_seconds:.1f} s -> {model_dir / str(version)}")
    return model_dir / str(version)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=program_name(), description=__doc__.splitlines()[0],
                                     formatter_class=DefaultsHelpFormatter)
    parser.add_argument("--arch", required=True, help=f"one of {', '.join(list_models())}, or 'all'")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", help="checkpoint file (default: the newest in --checkpoints/<arch>/)")
    source.add_argument("--weights", choices=[WEIGHTS_NAME], help="the shipped trained weights, even when a local "
                        "checkpoint exists (without any of these flags they are used when none exists)")
    source.add_argument("--random-init", action="store_true", help="export an untrained model (marked in the metadata)")
    parser.add_argument("--checkpoints", type=Path, default=Path("checkpoints"), help="where to look for checkpoints")
    parser.add_argument("--out", type=Path, help=f"model repository (default: {TRAINED_OUT}; "
                        f"with --random-init: {UNTRAINED_OUT}; with --quantize: {QUANTIZED_OUT})")
    parser.add_argument("--force", action="store_true", help="allow an untrained export beside trained versions")
    parser.add_argument("--version", type=int, help="version number (default: one above the newest)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    parser.add_argument("--features", default="all", help="feature taps to output: all, none, or name,name")
    parser.add_argument("--data-dir", help="Fashion-MNIST directory, for the parity check")
    int8 = parser.add_argument_group("int8 (ONNX Runtime static quantization, QDQ; export/quantize.py)")
    int8.add_argument("--quantize", choices=["int8"], help="export <arch>_int8, calibrated on training images and "
                      f"checked against fp32 on the test set (default --out: {QUANTIZED_OUT})")
    int8.add_argument("--calibration-images", type=int, default=CALIBRATION_IMAGES, help="training images to calibrate on")
    int8.add_argument("--min-agreement", type=float, default=Thresholds.min_agreement,
                      help="required top-1 agreement with fp32 (fraction)")
    int8.add_argument("--max-accuracy-change", type=float, default=Thresholds.max_accuracy_change,
                      help="allowed |int8 - fp32| test accuracy (fraction: 0.003 = 0.3 points)")
    args = parser.parse_args(argv)

    archs = list_models() if args.arch == "all" else [args.arch]
    if args.checkpoint and len(archs) > 1:
        parser.error("--checkpoint names one file; use it with one --arch")
    out = args.out or (UNTRAINED_OUT if args.random_init else QUANTIZED_OUT if args.quantize else TRAINED_OUT)
    thresholds = Thresholds(args.min_agreement, args.max_accuracy_change)
    for arch in archs:
        try:
            export(arch, out, checkpoint=args.checkpoint, random_init=args.random_init, version=args.version,
                   opset=args.opset, features=args.features, checkpoints_dir=args.checkpoints, data_dir=args.data_dir,
                   force=args.force, shipped=bool(args.weights), quantize=args.quantize,
                   calibration_images=args.calibration_images, thresholds=thresholds)
        except (ExportError, QuantizationError, FileExistsError) as error:
            parser.exit(1, f"error: {error}\n")
        except (ParityError, onnx.checker.ValidationError) as error:
            parser.exit(1, f"error: {arch} failed verification; nothing was written:\n{error}\n")
        except OSError as error:
            parser.exit(1, f"error: cannot write the model repository at {out}: {error}\n")


if __name__ == "__main__":
    main()
