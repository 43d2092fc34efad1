"""Every registered model builds, its declared feature taps match reality, and the book's shapes hold."""
from functools import cache

import pytest
import torch
from torch import nn

import models
from models.builders import input_side

BOOK_ORDER = ["lenet", "lenet_bn", "alexnet", "vgg11", "nin", "googlenet", "resnet18", "densenet"]
BATCH = 2


@cache
def _run(name: str) -> tuple[models.TapNet, torch.Tensor, dict[str, torch.Tensor]]:
    """Build `name` once per session and run one batch at its default side, in eval mode."""
    torch.manual_seed(0)
    model = models.create_model(name).eval()
    x = torch.rand(BATCH, 1, model.input_side, model.input_side)
    with torch.no_grad():
        logits, features = model(x, return_features=True)
    return model, logits, features


def test_registry_lists_the_book_models_in_order():
    assert models.list_models() == BOOK_ORDER


def test_unknown_model_names_the_registered_ones():
    with pytest.raises(ValueError, match="nope") as excinfo:
        models.create_model("nope")
    for name in BOOK_ORDER:
        assert name in str(excinfo.value)


def test_duplicate_registration_is_refused():
    with pytest.raises(ValueError, match="lenet"):
        models.register_model("lenet", input_side=28)(lambda *, num_classes=10: None)
    assert models.list_models() == BOOK_ORDER


@pytest.mark.parametrize("name", models.list_models())
def test_logits_shape(name):
    _, logits, _ = _run(name)
    assert logits.shape == (BATCH, 10)


@pytest.mark.parametrize("name", models.list_models())
def test_declared_taps_match_the_features(name):
    model, _, features = _run(name)
    assert list(features) == [tap.name for tap in model.feature_info]
    actual = {tap.name: tuple(features[tap.name].shape) for tap in model.feature_info}
    declared = {tap.name: (BATCH, *tap.shape) for tap in model.feature_info}
    assert actual == declared
    assert model.feature_info[-1].size is None, "the last tap is the penultimate vector"


BOOK_SHAPES = [
    ("lenet", "conv1", (6, 28, 28)), ("lenet", "pool1", (6, 14, 14)),
    ("lenet", "conv2", (16, 10, 10)), ("lenet", "pool2", (16, 5, 5)),
    ("alexnet", "conv1", (96, 54, 54)), ("alexnet", "pool1", (96, 26, 26)),
    ("alexnet", "conv2", (256, 26, 26)), ("alexnet", "pool2", (256, 12, 12)),
    ("alexnet", "conv3", (384, 12, 12)), ("alexnet", "pool3", (256, 5, 5)),
    ("nin", "nin1", (96, 54, 54)), ("nin", "pool1", (96, 26, 26)),
    ("nin", "nin2", (256, 26, 26)), ("nin", "pool2", (256, 12, 12)),
    ("nin", "nin3", (384, 12, 12)), ("nin", "pool3", (384, 5, 5)), ("nin", "nin4", (10, 5, 5)),
    ("googlenet", "b1", (64, 24, 24)), ("googlenet", "b2", (192, 12, 12)),
    ("googlenet", "pool3", (480, 6, 6)), ("googlenet", "pool4", (832, 3, 3)), ("googlenet", "gap", (1024,)),
    ("resnet18", "stem", (64, 24, 24)), ("resnet18", "stage1", (64, 24, 24)),
    ("resnet18", "stage2", (128, 12, 12)), ("resnet18", "stage3", (256, 6, 6)),
    ("resnet18", "stage4", (512, 3, 3)),
    ("vgg11", "block5", (128, 7, 7)),
]


@pytest.mark.parametrize("name,tap,shape", BOOK_SHAPES)
def test_book_printed_shapes(name, tap, shape):
    _, _, features = _run(name)
    assert tuple(features[tap].shape) == (BATCH, *shape)


def test_densenet_channel_sequence():
    _, _, features = _run("densenet")
    names = ["stem", "dense1", "trans1", "dense2", "trans2", "dense3", "trans3", "dense4"]
    assert [features[n].shape[1] for n in names] == [64, 192, 96, 224, 112, 240, 120, 248]


def test_vgg11_flattens_6272_features():
    model, _, features = _run("vgg11")
    assert features["block5"].flatten(1).shape == (BATCH, 6272)
    first_linear = next(m for m in model.stages.fc1.modules() if isinstance(m, nn.Linear))
    assert first_linear.in_features == 6272


def test_vgg11_trains_at_112_px_and_its_head_resize_is_nothing_at_224():
    """Low-resolution epochs (models/recipes.py) reach the 7 × 7 head through ToHeadSide, which passes 224 px
    maps through untouched, so the exported graph and the shipped weights see the book's VGG-11."""
    from models.vgg import ToHeadSide
    at_224 = torch.randn(2, 128, 7, 7)
    assert ToHeadSide()(at_224) is at_224
    assert ToHeadSide()(torch.randn(2, 128, 3, 3)).shape == (2, 128, 7, 7)
    model = models.create_model("vgg11").eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 112, 112)).shape == (2, 10)


@pytest.mark.parametrize("name", models.list_models())
def test_the_registered_input_side_is_the_models(name):
    """The side registered beside each builder (read without building the model) is the one it takes."""
    model, _, _ = _run(name)
    assert input_side(name) == model.input_side


def test_registry_lists_trained_models_and_refuses_unknown_weights():
    assert set(models.list_models(trained=True)) <= set(BOOK_ORDER) and "lenet" in models.list_models(trained=True)
    with pytest.raises(ValueError, match="imagenet"):
        models.create_model("lenet", weights="imagenet")
