import json

import pytest
import torch

from models.checkpoint import latest_checkpoint, load_checkpoint
from models.recipes import make_config
from models.train import augment, main


def test_book_and_modern_recipes(data_dir):
    book = make_config("resnet18", "book")
    assert (book.lr, book.batch_size, book.side, book.init, book.momentum, book.mean) == (0.05, 256, 96, "xavier", 0.0, None)
    modern = make_config("lenet_bn", "modern", lr=0.5, seed=None)
    assert modern.lr == 0.5 and modern.seed == 0 and modern.momentum == 0.9 and modern.mean is not None


def test_augment_keeps_shape_and_pixels():
    config = make_config("lenet", "modern", shift=2)
    images = torch.randint(0, 256, (16, 1, 28, 28), dtype=torch.uint8)
    out = augment(images, config, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == torch.uint8
    assert not torch.equal(out, images)


def test_lenet_bn_one_modern_epoch_on_the_cpu(lenet_bn_checkpoint):
    """The foundation's acceptance bar: one CPU epoch of the modern recipe reaches 0.80 (conftest trains it)."""
    assert latest_checkpoint("lenet_bn", lenet_bn_checkpoint.parent.parent) == lenet_bn_checkpoint
    model, checkpoint = load_checkpoint(lenet_bn_checkpoint)
    assert checkpoint["metrics"]["test_acc"] >= 0.80
    assert checkpoint["config"]["arch"] == "lenet_bn" and checkpoint["config"]["recipe"] == "modern"
    assert not model.training
    metrics = json.loads(lenet_bn_checkpoint.with_suffix(".json").read_text())
    assert metrics["test_acc"] == checkpoint["metrics"]["test_acc"] and len(metrics["history"]) == 1
    assert lenet_bn_checkpoint.with_suffix(".png").stat().st_size > 10_000


def test_train_cli_refuses_an_unknown_arch(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--arch", "lenet5", "--epochs", "1"])
    assert exit_info.value.code == 2
    assert "unknown model 'lenet5'" in capsys.readouterr().err
