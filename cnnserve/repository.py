"""Reading a Triton-layout model repository (written by `export.onnx`); neither torch nor ONNX Runtime.

A model is usable only when its config parses, its metadata is complete (`cnnserve.metadata`) and
its ONNX file's sha256 equals the one recorded at export; anything else is refused with a reason.
The server loads models through it, and `export.evaluate` reads exports with it.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass, replace
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from cnnserve.metadata import MetadataError, ModelMetadata
from cnnserve.spec import CONFIG_FILE, LOGITS, METADATA_FILE, available_versions, parse_decimal, sha256_file


class RepositoryError(RuntimeError):
    """A model directory that cannot be served, with the reason."""


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: int
    model_path: Path
    metadata: ModelMetadata
    config: mc.ModelConfig

    @property
    def labels(self) -> tuple[str, ...]:
        return self.metadata.labels

    @property
    def input_side(self) -> int:
        """The side of the square uint8 images the graph takes (its input shape is [N, 1, side, side])."""
        return self.metadata.input_side

    # cached: the data plane asks on every request
    @functools.cached_property
    def feature_names(self) -> list[str]:
        return [name for name in self.output_shapes if name != LOGITS]

    @functools.cached_property
    def output_shapes(self) -> dict[str, list[int]]:
        """Output name -> shape without the batch dimension, in graph order (logits first)."""
        return {o.name: list(o.shape[1:]) for o in self.metadata.outputs}

    @functools.cached_property
    def output_values(self) -> dict[str, int]:
        """Output name -> values per image."""
        return {o.name: o.values_per_image for o in self.metadata.outputs}

    def logits_only(self, name: str) -> ModelVersion:
        """This version offered as `name` with its logits alone: its metadata and config list no feature map."""
        config = mc.ModelConfig()
        config.CopyFrom(self.config)
        config.name = name
        kept = [output for output in config.output if output.name == LOGITS]
        del config.output[:]
        config.output.extend(kept)
        outputs = tuple(o for o in self.metadata.outputs if o.name == LOGITS)
        return replace(self, name=name, metadata=replace(self.metadata, outputs=outputs), config=config)


def list_model_dirs(repository: Path) -> list[Path]:
    if not repository.is_dir():
        raise RepositoryError(f"model repository {repository} does not exist or is not a directory")
    return sorted(p for p in repository.iterdir() if p.is_dir() and not p.name.startswith("."))


def load_version(model_dir: Path, version: int | None = None) -> ModelVersion:
    """The given version of the model in `model_dir` (default: the newest), verified."""
    if not model_dir.is_dir():
        siblings = sorted(p.name for p in model_dir.parent.iterdir() if p.is_dir()) if model_dir.parent.is_dir() else []
        raise RepositoryError(f"{model_dir} does not exist" + (f"; {model_dir.parent} has {', '.join(siblings)}"
                                                               if siblings else ""))
    versions = available_versions(model_dir)
    if not versions:
        raise RepositoryError(f"{model_dir.name}/ holds no numbered version directory")
    if version is None:
        version = versions[-1]
    elif version not in versions:
        raise RepositoryError(f"{model_dir.name} has no version {version}; it has {versions}")
    metadata_name = f"{model_dir.name}/{version}/{METADATA_FILE}"
    config = read_config(model_dir)
    try:
        record = json.loads((model_dir / str(version) / METADATA_FILE).read_text())
    except (OSError, ValueError) as error:
        raise RepositoryError(f"{metadata_name}: unreadable ({getattr(error, 'strerror', None) or error})") from None
    try:
        metadata = ModelMetadata.from_json(record, metadata_name)
    except MetadataError as error:
        raise RepositoryError(str(error)) from None
    model_path = model_dir / str(version) / metadata.model_file
    recorded = metadata.sha256
    if not model_path.is_file():
        raise RepositoryError(f"{model_dir.name} v{version}: {model_path.name} is missing")
    actual = sha256_file(model_path)
    if actual != recorded:
        raise RepositoryError(f"{model_dir.name} v{version}: {model_path.name} has sha256 {actual[:12]}…, "
                              f"but its metadata records {recorded[:12]}…; the file was changed or damaged")
    return ModelVersion(model_dir.name, version, model_path, metadata, config)


def read_config(model_dir: Path) -> mc.ModelConfig:
    """The model's config.pbtxt (Triton's ModelConfig in protobuf text format), checked."""
    where = f"{model_dir.name}/{CONFIG_FILE}"
    try:
        config = text_format.Parse((model_dir / CONFIG_FILE).read_text(), mc.ModelConfig())
    except (OSError, UnicodeDecodeError, text_format.ParseError) as error:
        raise RepositoryError(f"{where}: unreadable ({getattr(error, 'strerror', None) or error})") from None
    check_config(config, where)
    return config


def policy_versions(config: mc.ModelConfig, available: list[int]) -> list[int]:
    """The versions the config's `version_policy` serves, ascending, by Triton's rules: `latest { num_versions: N }`
    the newest N of `available` (no policy: the newest one), `all {}` every one, `specific { versions: [...] }`
    exactly those listed, whether or not their directories exist (a missing one is the caller's to report)."""
    policy = config.version_policy
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return list(available)
    if choice == "specific":
        return sorted(set(policy.specific.versions))
    return available[-(policy.latest.num_versions if choice == "latest" else 1):] if available else []


MAX_BATCH_SIZE = 4096                    # what an exported graph's dynamic batch dimension allows
MAX_QUEUE_DELAY_US = 1_000_000


RUN_IMAGES_PARAMETER = "max_run_images"


def check_config(config: mc.ModelConfig, where: str) -> None:
    if not 1 <= config.max_batch_size <= MAX_BATCH_SIZE:
        raise RepositoryError(f"{where}: max_batch_size {config.max_batch_size} must be in 1..{MAX_BATCH_SIZE}")
    delay = config.dynamic_batching.max_queue_delay_microseconds
    if not 0 <= delay <= MAX_QUEUE_DELAY_US:
        raise RepositoryError(f"{where}: dynamic_batching.max_queue_delay_microseconds {delay} must be in "
                              f"0..{MAX_QUEUE_DELAY_US}")
    max_run_images(config, where)
    check_version_policy(config.version_policy, where)


def check_version_policy(policy: mc.ModelVersionPolicy, where: str) -> None:
    choice = policy.WhichOneof("policy_choice")
    if choice == "latest" and policy.latest.num_versions < 1:
        raise RepositoryError(f"{where}: version_policy latest num_versions {policy.latest.num_versions} must be "
                              f"at least 1")
    if choice == "specific" and (not policy.specific.versions or min(policy.specific.versions) < 1):
        raise RepositoryError(f"{where}: version_policy specific versions {list(policy.specific.versions)[:10]} must "
                              f"list version numbers of 1 or more")


def max_run_images(config: mc.ModelConfig, where: str = "config.pbtxt") -> int:
    """The cnnserve parameter `max_run_images` (images per ONNX Runtime run, see server/batcher.py); 0 when absent."""
    if RUN_IMAGES_PARAMETER not in config.parameters:
        return 0
    text = config.parameters[RUN_IMAGES_PARAMETER].string_value
    count = parse_decimal(text)
    if count is None or not 1 <= count <= config.max_batch_size:
        raise RepositoryError(f"{where}: parameters {RUN_IMAGES_PARAMETER!r} {text[:20]!r} must be an integer in "
                              f"1..max_batch_size ({config.max_batch_size})")
    return count
