"""What training, export and serving must agree on, in one place: the classes, the input the
served graphs take, the names of their input and logits, the model repository's file names and
version directories, the preprocessing record, feature-map selection and file hashing."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
IMAGE_SIDE = 28                 # Fashion-MNIST's side: every served graph takes uint8 [N, 1, 28, 28]
INPUT_NAME, LOGITS = "image", "logits"
# KServe v2 serves each model NAME also as NAME.logits, offering its logits alone: a generic client that asks
# for every output a model's metadata lists (perf_analyzer) then measures the classify path, and the metadata
# never lists an output that cannot be requested. A repository model of that very name takes precedence.
LOGITS_VIEW_SUFFIX = ".logits"

# Triton's layout: <repository>/<model>/{config.pbtxt, labels.txt, <version>/{model.onnx, metadata.json}}
MODEL_FILE, METADATA_FILE, CONFIG_FILE, LABELS_FILE = "model.onnx", "metadata.json", "config.pbtxt", "labels.txt"
DEFAULT_MAX_BATCH_SIZE = 64             # config.pbtxt's max_batch_size, and the server's per-request limit
DEFAULT_MAX_QUEUE_DELAY_US = 2000       # config.pbtxt's dynamic_batching delay
DEFAULT_MAX_MESSAGE_MB = 64             # gRPC message limit, both ways, on servers and clients alike


def message_limits(max_message_mb: int = DEFAULT_MAX_MESSAGE_MB) -> list[tuple[str, int]]:
    """gRPC options that set the message size limit both ways; servers and clients use the same."""
    limit = max_message_mb * 2**20
    return [("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit)]


@dataclass(frozen=True)
class Preprocessing:
    """What a graph does to the uint8 pixels before the network: scale to [0, 1], bilinear resize
    to `side` (half-pixel centres), then normalise with `mean`/`std` when given. Training records it
    in the checkpoint, export in the metadata."""
    side: int
    mean: float | None = None
    std: float | None = None


def parse_decimal(text: str, max_digits: int = 18) -> int | None:
    """A non-negative integer written in ASCII digits, else None. `str.isdigit` alone accepts '²' and
    other Unicode digits that `int()` then refuses, and a long enough digit string makes `int()` raise."""
    if not text or len(text) > max_digits or not text.isascii() or not text.isdigit():
        return None
    return int(text)


def available_versions(model_dir: Path) -> list[int]:
    """The numbered version directories of a model, ascending."""
    if not model_dir.is_dir():
        return []
    return sorted(v for p in model_dir.iterdir() if p.is_dir() and (v := parse_decimal(p.name)) is not None)


def next_version(model_dir: Path) -> int:
    return max(available_versions(model_dir), default=0) + 1


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class UnknownFeatures(LookupError):
    def __init__(self, unknown: list[str], available: list[str]):
        super().__init__(f"no feature map {', '.join(repr(n[:100]) for n in unknown[:10])}; "
                         f"it has: {', '.join(available) or 'none'} (or ask for 'all')")
        self.unknown, self.available = unknown, available


def select_features(available: list[str], requested: list[str]) -> list[str]:
    """The requested feature maps in the model's order; `["all"]` means every one."""
    if requested == ["all"]:
        return list(available)
    unknown = [name for name in requested if name not in available]
    if unknown:
        raise UnknownFeatures(unknown, available)
    return [name for name in available if name in requested]
