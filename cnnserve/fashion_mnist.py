"""Fashion-MNIST: the four IDX files, read whole into uint8 arrays. Torch-free, so that a tool of the serving
side (`python -m export.evaluate`, which scores an exported model) reads the dataset without PyTorch.

The directory comes from the caller (a `--data-dir` flag), else `FASHION_MNIST_DIR`, else
`data/fashion-mnist` when it holds the files, else the workspace's shared copy
(`../shared/datasets/fashion-mnist`) when it does, else `data/fashion-mnist`. The tests and every
command-line tool resolve it the same way. Missing files are downloaded from the official mirror and checked against
the official MD5 sums; files that are present are only checked for structure, because local
copies may be re-packed (see the shared dataset's README).
"""
from __future__ import annotations

import gzip
import hashlib
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cnnserve.spec import CLASSES, IMAGE_SIDE

__all__ = ["TRAIN_MEAN", "TRAIN_STD", "DataError", "FashionMNIST", "has_split", "load_fashion_mnist", "load_split",
           "read_idx", "resolve_data_dir"]


# Pixel statistics of the training split on [0, 1]; the modern recipe normalises with them.
TRAIN_MEAN, TRAIN_STD = 0.2861, 0.3528

MIRROR = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
OFFICIAL_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
_IDX_MAGIC = {2049: 1, 2051: 3}  # labels: 1 dimension, images: 3 dimensions


class DataError(RuntimeError):
    """The dataset is missing, corrupt or cannot be downloaded."""


@dataclass(frozen=True)
class FashionMNIST:
    train_images: np.ndarray  # uint8 [60000, 28, 28]
    train_labels: np.ndarray  # uint8 [60000]
    test_images: np.ndarray   # uint8 [10000, 28, 28]
    test_labels: np.ndarray   # uint8 [10000]


# Both relative to the working directory, the project root when run as documented.
LOCAL_DATA_DIR = Path("data/fashion-mnist")
SHARED_DATA_DIR = Path("../shared/datasets/fashion-mnist")


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    explicit = data_dir or os.environ.get("FASHION_MNIST_DIR")
    if explicit:
        return Path(explicit)
    for candidate in (LOCAL_DATA_DIR, SHARED_DATA_DIR):
        if has_split(candidate, "test"):
            return candidate
    return LOCAL_DATA_DIR


def has_split(directory: Path, split: str) -> bool:
    return all((directory / name).is_file() for name in SPLITS[split])


SPLITS = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
          "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


def load_split(data_dir: str | os.PathLike | None, split: str) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images [N, 28, 28] and labels [N] of the "train" or "test" split."""
    directory = resolve_data_dir(data_dir)
    for name in SPLITS[split]:
        if not (directory / name).exists():
            download(name, directory)
    images, labels = (read_idx(directory / name) for name in SPLITS[split])
    if len(images) != len(labels) or images.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
        raise DataError(f"{directory}: {len(images)} {split} images of {images.shape[1:]} but {len(labels)} labels")
    if labels.max() >= len(CLASSES):
        raise DataError(f"{directory}: label {labels.max()} is out of range 0..{len(CLASSES) - 1}")
    return images, labels


def load_fashion_mnist(data_dir: str | os.PathLike | None = None) -> FashionMNIST:
    return FashionMNIST(*load_split(data_dir, "train"), *load_split(data_dir, "test"))


def read_idx(path: Path) -> np.ndarray:
    """Read one gzipped IDX file; refuse a file that is not gzip, has a wrong magic or is truncated."""
    try:
        raw = gzip.decompress(path.read_bytes())
    except (OSError, EOFError) as error:
        raise DataError(f"{path} is not a readable gzip file ({error}); delete it to download it again") from None
    magic = int.from_bytes(raw[:4], "big")
    if magic not in _IDX_MAGIC:
        raise DataError(f"{path}: IDX magic {magic} is neither 2049 (labels) nor 2051 (images)")
    ndim = _IDX_MAGIC[magic]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        raise DataError(f"{path}: {len(raw)} bytes but its header {shape} needs {expected}; the file is truncated or corrupt")
    return np.frombuffer(bytearray(raw), dtype=np.uint8, offset=header).reshape(shape)


def download(name: str, directory: Path) -> None:
    created = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    target, partial = directory / name, directory / (name + ".part")
    try:
        with urllib.request.urlopen(MIRROR + name, timeout=30) as response, open(partial, "wb") as out:
            size = int(response.headers.get("Content-Length", 0)) or None
            with tqdm(total=size, unit="B", unit_scale=True, desc=f"download {name}") as bar:
                while chunk := response.read(1 << 16):
                    out.write(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError) as error:
        partial.unlink(missing_ok=True)
        if created and not any(directory.iterdir()):
            directory.rmdir()                      # leave nothing behind for a failed download
        raise DataError(
            f"cannot download {MIRROR + name} ({error}). Put the four Fashion-MNIST files "
            f"({', '.join(OFFICIAL_MD5)}) into {directory.resolve()}, or pass --data-dir / set FASHION_MNIST_DIR"
        ) from None
    digest = hashlib.md5(partial.read_bytes()).hexdigest()
    if digest != OFFICIAL_MD5[name]:
        partial.unlink()
        raise DataError(f"downloaded {name} has MD5 {digest}, expected {OFFICIAL_MD5[name]}")
    partial.rename(target)
