"""Training recipes: the book's, reproduced, and ours ("modern"), tuned per architecture.

A recipe is a `TrainConfig`; the CLI's flags override its fields. The config travels inside the
checkpoint, so export knows the preprocessing (input side, normalisation) that training used.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from models.data import TRAIN_MEAN, TRAIN_STD
from models.registry import create_model, list_models

RECIPES = ("book", "modern")


@dataclass(frozen=True)
class TrainConfig:
    arch: str
    recipe: str
    lr: float
    batch_size: int
    side: int                     # input side the images are resized to
    epochs: int = 10
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    label_smoothing: float = 0.0
    schedule: str = "constant"    # "constant" or "onecycle" (warm-up, then cosine decay to zero)
    flip: bool = False            # random horizontal flips
    shift: int = 0                # random shifts of up to this many pixels (zero padded)
    mean: float | None = None     # normalisation on [0, 1]; None: none
    std: float | None = None
    init: str = "default"         # "xavier" (Xavier-uniform conv/linear weights) or "default" (PyTorch's)
    seed: int = 0
    device: str = "auto"


# The book's table: (lr, batch size). Plain SGD, Xavier init, no normalisation or augmentation.
BOOK = {
    "lenet": (0.9, 256), "alexnet": (0.01, 128), "vgg11": (0.05, 128), "nin": (0.1, 128),
    "googlenet": (0.1, 128), "lenet_bn": (1.0, 256), "resnet18": (0.05, 256), "densenet": (0.1, 256),
}

# Ours: Nesterov momentum, one-cycle schedule, weight decay, label smoothing, flips and shifts,
# normalised inputs. Per architecture: peak lr, batch size, and what differs from the defaults.
MODERN_DEFAULTS = dict(momentum=0.9, nesterov=True, weight_decay=5e-4, label_smoothing=0.1,
                       schedule="onecycle", flip=True, shift=2, mean=TRAIN_MEAN, std=TRAIN_STD)
MODERN = {
    # Sigmoid networks: Xavier init keeps the sigmoids out of saturation; no shifts, which
    # cost these small nets more in 10 epochs than they give.
    "lenet": dict(lr=0.3, batch_size=128, init="xavier", shift=0, weight_decay=1e-4),
    "lenet_bn": dict(lr=0.5, batch_size=128, init="xavier", shift=0, weight_decay=1e-4),
    "alexnet": dict(lr=0.02, batch_size=128),
    "vgg11": dict(lr=0.05, batch_size=128),
    "nin": dict(lr=0.05, batch_size=128),
    "googlenet": dict(lr=0.1, batch_size=128),
    "resnet18": dict(lr=0.1, batch_size=256),
    "densenet": dict(lr=0.1, batch_size=256),
}


def make_config(arch: str, recipe: str, **overrides) -> TrainConfig:
    """The recipe's config for `arch`; `overrides` with value None are ignored (unset CLI flags)."""
    if arch not in list_models():
        raise ValueError(f"unknown model {arch!r}; registered models: {', '.join(list_models())}")
    side = create_model(arch).input_side
    if recipe == "book":
        lr, batch_size = BOOK[arch]
        config = TrainConfig(arch, "book", lr=lr, batch_size=batch_size, side=side, init="xavier")
    elif recipe == "modern":
        config = TrainConfig(arch, "modern", side=side, **{**MODERN_DEFAULTS, **MODERN[arch]})
    else:
        raise ValueError(f"unknown recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
    return replace(config, **{k: v for k, v in overrides.items() if v is not None})
