"""Checkpoints that carry their own config and metrics: `checkpoints/<arch>/<recipe>-seed<N>-<time>.pt`.

A checkpoint is a `torch.save` of plain data (config dict, metrics dict, state dict), so it
loads with `weights_only=True` and never runs pickled code.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from cnnserve.spec import sha256_file
from models.builders import TapNet, build_model
from models.recipes import TrainConfig


class CheckpointError(RuntimeError):
    pass


def save_checkpoint(path: Path, model: TapNet, config: TrainConfig, metrics: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    torch.save({"config": asdict(config), "preprocessing": asdict(config.preprocessing), "metrics": metrics,
                "state_dict": state}, path)


def load_checkpoint(path: str | Path) -> tuple[TapNet, dict]:
    """The model in eval mode on the CPU, and the checkpoint dict (config, metrics, sha256)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        model = build_model(checkpoint["config"]["arch"])
        model.load_state_dict(checkpoint["state_dict"])
    except (RuntimeError, KeyError, ValueError, OSError) as error:
        raise CheckpointError(f"{path} is not a usable cnnserve checkpoint: {error}") from None
    checkpoint["sha256"] = sha256_file(path)
    checkpoint["path"] = str(path)
    return model.eval(), checkpoint


def latest_checkpoint(arch: str, directory: str | Path = "checkpoints") -> Path | None:
    """The newest checkpoint of `arch` under `directory`, or None."""
    candidates = sorted(Path(directory, arch).glob("*.pt"), key=lambda p: p.stat().st_mtime)
    return candidates[-1] if candidates else None
