"""Models by name: `create_model(name, weights=...)`, `list_models()`: the package's public way to get one.

The top of `models/`: it builds with `models.builders` and loads shipped weights with `models.pretrained`,
and only the package's __init__ imports it (training and checkpoints build with `models.builders`), so
the dependencies point one way (tests/test_import_contract.py).
"""
from __future__ import annotations

import torch

from models.builders import TapNet, build_model, registered_names


def list_models(*, trained: bool = False) -> list[str]:
    """Registered names, in registration order (the book's order); `trained`: only those with shipped weights."""
    if trained:
        from models.pretrained import list_weights  # deferred: see create_model
        return [name for name in list_weights() if name in registered_names()]
    return registered_names()


def create_model(name: str, *, weights: str | None = None, **kwargs) -> TapNet:
    """A new model; `weights="fashion-mnist"` loads the shipped trained weights (sha256-checked), in eval mode."""
    if weights is None:
        return build_model(name, **kwargs)
    # Deferred, not at the top: `import models` imports this module, and `python -m models.pretrained`
    # must not find models.pretrained imported already (runpy warns that it would run twice).
    from models.pretrained import WEIGHTS_NAME, get_weights, load_state_dict
    if weights != WEIGHTS_NAME:
        raise ValueError(f"unknown weights {weights!r} for {name}; the shipped ones are {WEIGHTS_NAME!r}")
    state = load_state_dict(get_weights(name))
    # Built without storage, then given the shipped tensors: randomly initialising VGG-11's 43M parameters only
    # to overwrite them took longer than reading the weights. Every tensor of a model is in its state dict.
    with torch.device("meta"):
        model = build_model(name, **kwargs)
    model.load_state_dict(state, assign=True)
    return model.eval()
