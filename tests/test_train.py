import json

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


def test_lenet_bn_one_modern_epoch_on_the_cpu(data_dir, tmp_path, capsys):
    """The foundation's acceptance bar: one CPU epoch of the modern recipe reaches 0.80."""
    main(["--arch", "lenet_bn", "--recipe", "modern", "--epochs", "1", "--device", "cpu",
          "--data-dir", str(data_dir), "--out", str(tmp_path), "--no-progress"])
    checkpoint_path = latest_checkpoint("lenet_bn", tmp_path)
    model, checkpoint = load_checkpoint(checkpoint_path)
    assert checkpoint["metrics"]["test_acc"] >= 0.80
    assert checkpoint["config"]["arch"] == "lenet_bn" and checkpoint["config"]["recipe"] == "modern"
    metrics = json.loads(checkpoint_path.with_suffix(".json").read_text())
    assert metrics["test_acc"] == checkpoint["metrics"]["test_acc"]
    assert checkpoint_path.with_suffix(".png").stat().st_size > 10_000
    assert "test acc" in capsys.readouterr().out
