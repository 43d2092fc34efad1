import gzip
import shutil

import numpy as np
import pytest

from cnnserve.fashion_mnist import DataError, load_fashion_mnist, read_idx
from cnnserve.spec import CLASSES
from models.data import to_model_input


def test_reads_the_shared_files(fashion):
    assert fashion.train_images.shape == (60000, 28, 28) and fashion.train_images.dtype == np.uint8
    assert fashion.test_images.shape == (10000, 28, 28)
    assert len(fashion.train_labels) == 60000 and len(fashion.test_labels) == 10000
    assert sorted(set(fashion.train_labels.tolist())) == list(range(10)) == list(range(len(CLASSES)))
    assert np.bincount(fashion.train_labels).tolist() == [6000] * 10
    assert np.bincount(fashion.test_labels).tolist() == [1000] * 10
    assert abs(fashion.train_images.mean() / 255 - 0.2861) < 1e-3


def test_refuses_a_truncated_file(data_dir, tmp_path):
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(data_dir / name, tmp_path / name)
    raw = gzip.decompress((data_dir / "t10k-images-idx3-ubyte.gz").read_bytes())
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(raw[:-1000], compresslevel=1))
    with pytest.raises(DataError, match="truncated"):
        load_fashion_mnist(tmp_path)


def test_refuses_a_file_that_is_not_gzip(tmp_path):
    bad = tmp_path / "t10k-labels-idx1-ubyte.gz"
    bad.write_bytes(b"not a gzip file")
    with pytest.raises(DataError, match="not a readable gzip"):
        read_idx(bad)


def test_missing_files_offline_say_where_to_put_them(tmp_path, monkeypatch):
    # Point the mirror at a closed local port: the download fails at once, as it does offline.
    monkeypatch.setattr("cnnserve.fashion_mnist.MIRROR", "http://127.0.0.1:9/")
    with pytest.raises(DataError, match=str(tmp_path)):
        load_fashion_mnist(tmp_path)
    assert not list(tmp_path.glob("*.part"))


def test_to_model_input_scales_resizes_and_normalises(fashion):
    import torch
    images = torch.from_numpy(fashion.test_images[:4]).unsqueeze(1)
    x = to_model_input(images, 28)
    assert x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert to_model_input(images, 96).shape == (4, 1, 96, 96)
    normalised = to_model_input(images, 28, 0.5, 0.25)
    torch.testing.assert_close(normalised, (x - 0.5) / 0.25)
