"""Shipped trained weights: safetensors files under `models/weights/` and their registry.

    python -m models.pretrained publish CHECKPOINT [--dtype float16|int8-per-channel] [--weights-dir models/weights]
    python -m models.pretrained list | reindex

Like torchvision's `Weights` enums: each entry records what produced the weights (recipe and its
settings, epochs, device, training wall time), how good they are (test accuracy in fp32 at
training, and again after the round trip through the stored dtype), the parameter count and the
file's sha256, which is checked on every load. `index.json` is derived from the files themselves
(their safetensors metadata and hash), so it cannot disagree with them.

Storage dtypes: `float16` (and `float32`, `bfloat16`) store every floating tensor in that dtype.
`int8-per-channel` stores every weight of two or more dimensions (each Linear and Conv weight) as
int8, symmetric, one float32 scale per output channel beside it (`<name>.scale`: max |w| / 127
over the channel), and the other floating tensors (biases, BatchNorm) as float16: AlexNet's and
VGG-11's 43M-parameter dense heads fit one file under 50 MB that way. Every dtype loads as float32;
an int8 weight loads as `int8.float() * scale`, the exact values its ONNX export then holds.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from cnnserve.entry import exit_if_missing, program_name, quiet_when_stdout_closes

with exit_if_missing("train"):
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from cnnserve.spec import sha256_file
    from models.builders import registered_names
    from models.recipes import how_to_train

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
INDEX_FILE = "index.json"
WEIGHTS_NAME = "fashion-mnist"          # the one set of weights per architecture: create_model(arch, weights=...)
FLOAT_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
INT8_PER_CHANNEL = "int8-per-channel"
STORAGE_DTYPES = (*FLOAT_DTYPES, INT8_PER_CHANNEL)
SCALE_SUFFIX = ".scale"       # `<name>.scale` beside an int8 `<name>`


class WeightsError(RuntimeError):
    pass


@dataclass(frozen=True)
class Weights:
    arch: str
    file: str                 # relative to the weights directory
    sha256: str
    dtype: str                # one of STORAGE_DTYPES; loaded as float32
    recipe: str
    config: dict              # the full TrainConfig the checkpoint carried
    epochs: int
    test_acc: float           # fp32, at the end of training
    test_acc_stored: float    # after the round trip through `dtype` (fp32 compute)
    train_seconds: float
    wall_seconds: float
    device: str
    params: int
    size_bytes: int


def read_index(weights_dir: Path = WEIGHTS_DIR) -> dict[str, Weights]:
    path = weights_dir / INDEX_FILE
    if not path.is_file():
        return {}
    return {entry["arch"]: Weights(**entry) for entry in json.loads(path.read_text())}


def list_weights(weights_dir: Path = WEIGHTS_DIR) -> list[str]:
    """Architectures with shipped trained weights."""
    return list(read_index(weights_dir))


def get_weights(arch: str, weights_dir: Path = WEIGHTS_DIR) -> Weights:
    index = read_index(weights_dir)
    if arch not in index:
        shipped = ", ".join(index) or "none"
        raise WeightsError(f"no shipped {WEIGHTS_NAME} weights for {arch!r} (shipped: {shipped}); train them "
                           f"with {how_to_train(arch)}")
    return index[arch]


def load_state_dict(weights: Weights, weights_dir: Path = WEIGHTS_DIR) -> dict[str, torch.Tensor]:
    """The state dict in float32, after checking the file's sha256 against the registry."""
    path = weights_dir / weights.file
    if not path.is_file():
        raise WeightsError(f"{path} is missing (registry lists it for {weights.arch})")
    actual = sha256_file(path)
    if actual != weights.sha256:
        raise WeightsError(f"{path} has sha256 {actual[:12]}…, the registry records {weights.sha256[:12]}…")
    return from_storage(load_file(path), weights.dtype)


def quantize_per_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 with one float32 scale per output channel (dim 0): q = round(w / s), s = max |w| / 127."""
    w = weight.detach().float()
    peak = w.abs().flatten(1).amax(dim=1)
    scale = torch.where(peak > 0, peak / 127, torch.ones_like(peak))     # an all-zero channel stays zero
    q = torch.round(w / per_channel(scale, w.dim())).clamp(-127, 127).to(torch.int8)
    return q, scale


def dequantize_per_channel(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.float() * per_channel(scale, q.dim())


def per_channel(scale: torch.Tensor, dims: int) -> torch.Tensor:
    """`scale` shaped to broadcast over every dimension but the first (the output channels)."""
    return scale.view(-1, *[1] * (dims - 1))


def to_storage(state: dict[str, torch.Tensor], dtype: str) -> dict[str, torch.Tensor]:
    """The tensors to write for `dtype` (see the module's docstring); non-floating tensors as they are."""
    rest = FLOAT_DTYPES.get(dtype, torch.float16)      # int8-per-channel: what is not int8 is float16
    stored = {}
    for name, t in state.items():
        if dtype == INT8_PER_CHANNEL and t.is_floating_point() and t.dim() >= 2:
            q, scale = quantize_per_channel(t)
            stored[name], stored[name + SCALE_SUFFIX] = q.contiguous(), scale
        else:
            stored[name] = (t.to(rest) if t.is_floating_point() else t).contiguous()
    return stored


def from_storage(stored: dict[str, torch.Tensor], dtype: str) -> dict[str, torch.Tensor]:
    """The float32 state dict that `to_storage(state, dtype)` stands for."""
    int8 = dtype == INT8_PER_CHANNEL
    state = {}
    for name, t in stored.items():
        if int8 and name.endswith(SCALE_SUFFIX):
            continue
        scale = stored.get(name + SCALE_SUFFIX) if int8 else None
        state[name] = (dequantize_per_channel(t, scale) if scale is not None
                       else t.float() if t.is_floating_point() else t)
    return state


def publish(checkpoint_path: Path, dtype: str = "float16", weights_dir: Path = WEIGHTS_DIR,
            data_dir: str | None = None) -> Weights:
    """Store a checkpoint's weights as `<arch>.safetensors` in `dtype`, measure the round trip, reindex."""
    from cnnserve.fashion_mnist import load_fashion_mnist
    from models.checkpoint import CheckpointError, load_checkpoint
    from models.recipes import TrainConfig
    from models.train import evaluate

    if dtype not in STORAGE_DTYPES:
        raise WeightsError(f"unknown storage dtype {dtype!r}; choose one of {', '.join(STORAGE_DTYPES)}")
    try:
        model, checkpoint = load_checkpoint(checkpoint_path)
    except CheckpointError as error:
        raise WeightsError(str(error)) from None
    config = checkpoint["config"]
    stored = to_storage(model.state_dict(), dtype)
    model.load_state_dict(from_storage(stored, dtype))
    data = load_fashion_mnist(data_dir)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    test_acc_stored = evaluate(model.to(device), torch.from_numpy(data.test_images).to(device),
                               torch.from_numpy(data.test_labels).long().to(device), TrainConfig(**config))
    metrics = {k: v for k, v in checkpoint["metrics"].items() if k != "history"}
    metrics.update(epochs=len(checkpoint["metrics"]["history"]), test_acc_stored=test_acc_stored,
                   params=sum(p.numel() for p in model.parameters()))
    weights_dir.mkdir(parents=True, exist_ok=True)
    save_file(stored, weights_dir / f"{config['arch']}.safetensors",
              metadata={"dtype": dtype, "config": json.dumps(config), "metrics": json.dumps(metrics)})
    return reindex(weights_dir)[config["arch"]]


def reindex(weights_dir: Path = WEIGHTS_DIR) -> dict[str, Weights]:
    """Rewrite `index.json` from the safetensors files in `weights_dir`, in the registry's model order."""
    entries = {}
    for path in weights_dir.glob("*.safetensors"):
        with safe_open(path, framework="pt") as f:
            meta = f.metadata()
        config, metrics = json.loads(meta["config"]), json.loads(meta["metrics"])
        entries[config["arch"]] = Weights(
            arch=config["arch"], file=path.name, sha256=sha256_file(path), dtype=meta["dtype"],
            recipe=config["recipe"], config=config, epochs=metrics["epochs"], test_acc=metrics["test_acc"],
            test_acc_stored=metrics["test_acc_stored"], train_seconds=round(metrics["train_seconds"], 1),
            wall_seconds=round(metrics.get("wall_seconds", metrics["train_seconds"]), 1),
            device=metrics["device"], params=metrics["params"], size_bytes=path.stat().st_size)
    ordered = {arch: entries[arch] for arch in registered_names() if arch in entries}
    (weights_dir / INDEX_FILE).write_text(json.dumps([asdict(w) for w in ordered.values()], indent=2) + "\n")
    return ordered


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=program_name(), description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    add = commands.add_parser("publish", help="store a checkpoint's weights and register them")
    add.add_argument("checkpoint", type=Path)
    add.add_argument("--dtype", choices=STORAGE_DTYPES, default="float16")
    add.add_argument("--weights-dir", type=Path, default=WEIGHTS_DIR)
    add.add_argument("--data-dir", help="Fashion-MNIST directory, to measure the round trip's accuracy")
    show = commands.add_parser("list", help="the registry, one line per architecture")
    show.add_argument("--weights-dir", type=Path, default=WEIGHTS_DIR)
    rebuild = commands.add_parser("reindex", help=f"rewrite {INDEX_FILE} from the files (after copying some in)")
    rebuild.add_argument("--weights-dir", type=Path, default=WEIGHTS_DIR)
    args = parser.parse_args(argv)
    try:
        if args.command == "publish":
            w = publish(args.checkpoint, args.dtype, args.weights_dir, args.data_dir)
            print(f"{w.arch}: {w.file} ({w.dtype}, {w.size_bytes / 1e6:.1f} MB), test acc {w.test_acc:.4f} fp32, "
                  f"{w.test_acc_stored:.4f} after the {w.dtype} round trip; sha256 {w.sha256[:12]}…")
        else:
            index = reindex(args.weights_dir) if args.command == "reindex" else read_index(args.weights_dir)
            with quiet_when_stdout_closes():
                for w in index.values():
                    print(f"{w.arch:10s} {w.test_acc_stored:.4f}  {w.recipe:10s} {w.epochs:2d} epochs  "
                          f"{w.wall_seconds / 60:5.1f} min on {w.device:24s} {w.params:>11,} params  {w.dtype:16s}  "
                          f"{w.size_bytes / 1e6:5.1f} MB")
    except (WeightsError, OSError) as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
