"""Writing a model into a Triton-layout model repository:

    <repository>/<arch>/config.pbtxt       Triton ModelConfig (text format)
    <repository>/<arch>/labels.txt         one class name per line
    <repository>/<arch>/<version>/model.onnx
    <repository>/<arch>/<version>/metadata.json

A version is built in a hidden staging directory and renamed into place only when every check
passed, so a failed export never leaves a half-written version behind.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from cnnserve.spec import (
    CONFIG_FILE,
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_MAX_QUEUE_DELAY_US,
    INPUT_NAME,
    LABELS_FILE,
    METADATA_FILE,
    MODEL_FILE,
    next_version,
)

__all__ = ["CONFIG_FILE", "LABELS_FILE", "METADATA_FILE", "MODEL_FILE", "model_config", "next_version",
           "staged_version", "write_model_files"]



@contextmanager
def staged_version(model_dir: Path, version: int):
    """Yield a staging directory; on clean exit it becomes `<model_dir>/<version>`, else it is removed."""
    final = model_dir / str(version)
    if final.exists():
        raise FileExistsError(f"{final} already exists; pass another --version or remove it")
    created = [d for d in (model_dir, *model_dir.parents) if not d.exists()]   # what a failure must remove
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".staging-{version}-", dir=model_dir))
    try:
        yield staging
        staging.chmod(0o755)   # mkdtemp makes it private; a served repository is read by others (Triton)
        staging.rename(final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        for directory in created:           # deepest first; only when the export left nothing in it
            if directory.exists() and not any(directory.iterdir()):
                directory.rmdir()


def model_config(name: str, input_dims: list[int], outputs: dict[str, list[int]]) -> mc.ModelConfig:
    """Triton's ModelConfig: dims exclude the batch dimension, which `max_batch_size` makes dynamic."""
    config = mc.ModelConfig(name=name, platform="onnxruntime_onnx", max_batch_size=DEFAULT_MAX_BATCH_SIZE)
    config.input.add(name=INPUT_NAME, data_type=mc.TYPE_UINT8, dims=input_dims)
    for index, (output, dims) in enumerate(outputs.items()):
        # The first output is the logits; Triton's classification extension reads its labels file.
        config.output.add(name=output, data_type=mc.TYPE_FP32, dims=dims,
                          label_filename=LABELS_FILE if index == 0 else "")
    config.dynamic_batching.max_queue_delay_microseconds = DEFAULT_MAX_QUEUE_DELAY_US
    config.version_policy.latest.num_versions = 1
    return config


def write_text_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_model_files(model_dir: Path, config: mc.ModelConfig, labels: list[str]) -> None:
    write_text_atomically(model_dir / CONFIG_FILE, text_format.MessageToString(config))
    write_text_atomically(model_dir / LABELS_FILE, "\n".join(labels) + "\n")
