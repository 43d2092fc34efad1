"""The model builders keyed by name, each registered with the input side its model takes, and what every
builder returns: a `TapNet` with its declared feature taps.

Every model is a `TapNet`: an ordered `nn.Sequential` of named stages whose outputs are the
feature taps, followed by a `classifier`. `forward(x, return_features=True)` returns the logits
and a dict of every tap by name; it is plain tensor code, so `torch.onnx.export` traces it
without hooks.

The bottom of `models/`: it imports no other module of the package. Training and checkpoints build
untrained models here; `models.create_model` (models/registry.py) adds the shipped weights on top.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class FeatureTap:
    """A named intermediate output: `channels` × `size` × `size`, or a `channels` vector when size is None."""

    name: str
    channels: int
    size: int | None

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.channels,) if self.size is None else (self.channels, self.size, self.size)


class TapNet(nn.Module):
    """Named stages (each output is a feature tap) followed by a classifier."""

    def __init__(self, stages: OrderedDict[str, nn.Module], classifier: nn.Module, *,
                 input_side: int, feature_info: list[FeatureTap]):
        super().__init__()
        self.stages = nn.Sequential(stages)
        self.classifier = classifier
        self.input_side = input_side
        self.feature_info = tuple(feature_info)
        declared = [tap.name for tap in self.feature_info]
        if declared != list(stages):
            raise ValueError(f"feature_info names {declared} must equal the stage names {list(stages)}")

    def forward(self, x: torch.Tensor, return_features: bool = False):
        features = {}
        for name, stage in self.stages.named_children():
            x = stage(x)
            features[name] = x
        logits = self.classifier(x)
        return (logits, features) if return_features else logits


ModelBuilder = Callable[..., TapNet]


@dataclass(frozen=True)
class Registered:
    builder: ModelBuilder
    input_side: int     # the side its model takes, readable without building it (VGG-11 has 43M parameters)


_REGISTERED: dict[str, Registered] = {}


def register_model(name: str, *, input_side: int) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator: register a builder under `name` with its model's input side; a second builder with the same
    name is an error."""

    def add(builder: ModelBuilder) -> ModelBuilder:
        if name in _REGISTERED:
            raise ValueError(f"model name {name!r} is already registered by {_REGISTERED[name].builder.__module__}")
        _REGISTERED[name] = Registered(builder, input_side)
        return builder

    return add


def registered_names() -> list[str]:
    """In registration order (the book's order)."""
    return list(_REGISTERED)


def _registered(name: str) -> Registered:
    try:
        return _REGISTERED[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; registered models: {', '.join(_REGISTERED)}") from None


def build_model(name: str, **kwargs) -> TapNet:
    """A new model with initial (untrained) weights."""
    return _registered(name).builder(**kwargs)


def input_side(name: str) -> int:
    return _registered(name).input_side
