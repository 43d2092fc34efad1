"""One exported model version's record (`<model>/<version>/metadata.json`): what the exporter writes,
what the repository reader validates, what every adapter reads, as attributes.

`ModelMetadata.from_json` is the only parser: each missing or wrong field is refused with an error
that names it. The provenance fields (checkpoint, parity, exporter, quantization) stay JSON objects:
people read them, the server only passes them on.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cnnserve.spec import LOGITS, Preprocessing


class MetadataError(ValueError):
    """A metadata.json that cannot be served; the message names the field."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]      # with the batch dimension first, -1 (any)

    @property
    def values_per_image(self) -> int:
        return math.prod(self.shape[1:])


@dataclass(frozen=True)
class ModelMetadata:
    trained: bool
    labels: tuple[str, ...]
    input: TensorInfo           # uint8 [-1, 1, side, side]
    outputs: tuple[TensorInfo, ...]   # logits first, then the feature maps in graph order
    model_file: str             # a file name in the version directory
    sha256: str                 # of the model file, checked at load
    test_acc: float | None = None
    arch: str | None = None
    version: int | None = None
    preprocessing: Preprocessing | None = None
    size_bytes: int | None = None
    checkpoint: dict | None = None      # path, sha256, recipe, config, metrics of the trained weights
    opset: int | None = None
    exporter: dict = field(default_factory=dict)
    parity: dict = field(default_factory=dict)
    exported_at: str | None = None
    export_seconds: float | None = None
    quantization: dict | None = None

    @property
    def input_side(self) -> int:
        """The side of the square uint8 images the graph takes."""
        return self.input.shape[-1]

    @property
    def recipe(self) -> str:
        return (self.checkpoint or {}).get("recipe", "")

    def to_json(self) -> dict:
        record = asdict(self)
        record["outputs"] = list(record["outputs"])
        for tensor in (record["input"], *record["outputs"]):
            tensor["shape"] = list(tensor["shape"])
        record["labels"] = list(self.labels)
        return {k: v for k, v in record.items() if v is not None or k in ("test_acc", "checkpoint")}

    @classmethod
    def from_json(cls, record: object, where: str = "metadata.json") -> ModelMetadata:
        def require(ok: bool, name: str, what: str) -> None:
            if not ok:
                raise MetadataError(f"{where}: {name} {what}")

        require(isinstance(record, dict), "the file", "must hold a JSON object")
        for key, kind in {"trained": bool, "labels": list, "input": dict, "outputs": list, "model_file": str,
                          "sha256": str}.items():
            require(key in record, key, "is missing")
            require(isinstance(record[key], kind), key, f"must be a JSON {_json_type(kind)}")
        labels = record["labels"]
        require(len(labels) > 0 and all(isinstance(label, str) for label in labels), "labels", "must be strings")
        image = _tensor(record["input"], "input", require)
        require(image.dtype == "uint8", "input.dtype", "must be 'uint8'")
        require(len(image.shape) == 4 and image.shape[1] == 1 and image.shape[2] == image.shape[3] > 0,
                "input.shape", "must be [-1, 1, side, side]")
        require(len(record["outputs"]) > 0, "outputs", "must list the logits and any feature maps")
        outputs = tuple(_tensor(o, f"outputs[{i}]", require) for i, o in enumerate(record["outputs"]))
        require(outputs[0].name == LOGITS and outputs[0].shape[1:] == (len(labels),), "outputs[0]",
                f"must be {LOGITS!r} with one value per label")
        require(len({o.name for o in outputs}) == len(outputs), "outputs", "must have distinct names")
        name = record["model_file"]
        require(name not in ("", ".", "..") and Path(name).name == name, "model_file",
                "must be a file name in the version directory (no path)")
        sha256 = record["sha256"]
        require(len(sha256) == 64 and all(c in "0123456789abcdef" for c in sha256), "sha256",
                "must be 64 hexadecimal digits")
        test_acc = record.get("test_acc")
        require(test_acc is None or _number(test_acc) and 0 <= test_acc <= 1, "test_acc",
                "must be null or a number in [0, 1]")
        optional = {"arch": str, "version": int, "size_bytes": int, "checkpoint": dict, "opset": int, "exporter": dict,
                    "parity": dict, "exported_at": str, "export_seconds": (int, float), "quantization": dict,
                    "preprocessing": dict}
        for key, kind in optional.items():
            value = record.get(key)
            require(value is None or isinstance(value, kind) and not isinstance(value, bool), key,
                    f"must be null or a JSON {_json_type(kind)}")
        preprocessing = record.get("preprocessing")
        if preprocessing is not None:
            try:
                preprocessing = Preprocessing(**preprocessing)
            except TypeError:
                require(False, "preprocessing", "must have side, mean and std")
        return cls(trained=record["trained"], labels=tuple(labels), input=image, outputs=outputs, model_file=name,
                   sha256=sha256, test_acc=test_acc, preprocessing=preprocessing,
                   **{key: record.get(key) for key in optional if key != "preprocessing" and record.get(key) is not None})


def _tensor(record: object, where: str, require) -> TensorInfo:
    require(isinstance(record, dict), where, "must be a JSON object {name, dtype, shape}")
    name, dtype, shape = record.get("name"), record.get("dtype", "float32"), record.get("shape")
    require(isinstance(name, str) and name != "", f"{where}.name", "must be a non-empty string")
    require(isinstance(dtype, str), f"{where}.dtype", "must be a string")
    require(isinstance(shape, list) and len(shape) >= 2 and shape[0] == -1
            and all(type(d) is int and d > 0 for d in shape[1:]), f"{where}.shape",
            "must be [-1, positive integers...]")
    return TensorInfo(name, dtype, tuple(shape))


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _json_type(kind) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {bool: "boolean", list: "array", dict: "object", str: "string", int: "integer", float: "number"}
    return " or ".join(dict.fromkeys(names[k] for k in kinds))
