"""Shared fixtures: the real Fashion-MNIST files (FASHION_MNIST_DIR, else the shared copy beside the project)."""
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "datasets" / "fashion-mnist"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    directory = Path(os.environ.get("FASHION_MNIST_DIR") or SHARED_DATA)
    assert (directory / "t10k-images-idx3-ubyte.gz").exists(), f"Fashion-MNIST not found in {directory}"
    return directory


@pytest.fixture(scope="session")
def fashion(data_dir):
    from models.data import load_fashion_mnist
    return load_fashion_mnist(data_dir)
