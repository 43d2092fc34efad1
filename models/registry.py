"""A registry of model builders keyed by name, and the feature-tap declaration every model carries.

Every model is a `TapNet`: an ordered `nn.Sequential` of named stages whose outputs are the
feature taps, followed by a `classifier`. `forward(x, return_features=True)` returns the logits
and a dict of every tap by name; it is plain tensor code, so `torch.onnx.export` traces it
without hooks.
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
_BUILDERS: dict[str, ModelBuilder] = {}


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator: register a builder under `name`; a second builder with the same name is an error."""

    def add(builder: ModelBuilder) -> ModelBuilder:
        if name in _BUILDERS:
            raise ValueError(f"model name {name!r} is already registered by {_BUILDERS[name].__module__}")
        _BUILDERS[name] = builder
        return builder

    return add


def list_models(*, trained: bool = False) -> list[str]:
    """Registered names, in registration order (the book's order); `trained`: only those with shipped weights."""
    if trained:
        from models.pretrained import list_weights
        return [name for name in list_weights() if name in _BUILDERS]
    return list(_BUILDERS)


def create_model(name: str, *, weights: str | None = None, **kwargs) -> TapNet:
    """A new model; `weights="fashion-mnist"` loads the shipped trained weights (sha256-checked), in eval mode."""
    try:
        builder = _BUILDERS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; registered models: {', '.join(_BUILDERS)}") from None
    model = builder(**kwargs)
    if weights is not None:
        from models.pretrained import WEIGHTS_NAME, get_weights, load_state_dict
        if weights != WEIGHTS_NAME:
            raise ValueError(f"unknown weights {weights!r} for {name}; the shipped ones are {WEIGHTS_NAME!r}")
        model.load_state_dict(load_state_dict(get_weights(name)))
        model.eval()
    return model
