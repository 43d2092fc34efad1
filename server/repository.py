"""Reading a Triton-layout model repository (written by `export.onnx`); no torch needed.

A model is usable only when its config parses, its metadata is complete and its ONNX file's
sha256 equals the one recorded at export; anything else is refused with a reason.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

CONFIG_FILE, METADATA_FILE = "config.pbtxt", "metadata.json"


class RepositoryError(RuntimeError):
    """A model directory that cannot be served, with the reason."""


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: int
    model_path: Path
    metadata: dict
    config: mc.ModelConfig

    @property
    def labels(self) -> list[str]:
        return self.metadata["labels"]

    @property
    def output_shapes(self) -> dict[str, list[int]]:
        """Output name -> shape without the batch dimension, in graph order (logits first)."""
        return {o["name"]: o["shape"][1:] for o in self.metadata["outputs"]}


def list_model_dirs(repository: Path) -> list[Path]:
    if not repository.is_dir():
        raise RepositoryError(f"model repository {repository} does not exist or is not a directory")
    return sorted(p for p in repository.iterdir() if p.is_dir() and not p.name.startswith("."))


def available_versions(model_dir: Path) -> list[int]:
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def load_version(model_dir: Path, version: int | None = None) -> ModelVersion:
    """The given version of the model in `model_dir` (default: the newest), verified."""
    versions = available_versions(model_dir) if model_dir.is_dir() else []
    if not versions:
        raise RepositoryError(f"{model_dir} holds no numbered version directory")
    if version is None:
        version = versions[-1]
    elif version not in versions:
        raise RepositoryError(f"{model_dir.name} has no version {version}; it has {versions}")
    try:
        config = text_format.Parse((model_dir / CONFIG_FILE).read_text(), mc.ModelConfig())
        metadata = json.loads((model_dir / str(version) / METADATA_FILE).read_text())
        model_path = model_dir / str(version) / metadata["model_file"]
        recorded = metadata["sha256"]
    except (OSError, ValueError, KeyError, text_format.ParseError) as error:
        raise RepositoryError(f"{model_dir.name} v{version}: unreadable config or metadata ({error})") from None
    if not model_path.is_file():
        raise RepositoryError(f"{model_dir.name} v{version}: {model_path.name} is missing")
    actual = sha256_of(model_path)
    if actual != recorded:
        raise RepositoryError(f"{model_dir.name} v{version}: {model_path.name} has sha256 {actual[:12]}…, "
                              f"but its metadata records {recorded[:12]}…; the file was changed or damaged")
    return ModelVersion(model_dir.name, version, model_path, metadata, config)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
