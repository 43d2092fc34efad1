"""The serving graph: raw uint8 pixels in; logits and the requested feature taps out.

Preprocessing lives inside the graph (`models.data.to_model_input`, the function training
uses), so a client sends Fashion-MNIST pixels as they are and serving cannot drift from training.
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from models.data import IMAGE_SIDE, to_model_input
from models.registry import TapNet

INPUT_NAME = "image"
LOGITS = "logits"

# The exporter logs one line per torchvision operator it cannot register; we use none of them.
logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)


class ServingGraph(nn.Module):
    def __init__(self, model: TapNet, features: list[str], mean: float | None, std: float | None):
        super().__init__()
        self.model = model
        self.features = features
        self.mean, self.std = mean, std

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = to_model_input(image, self.model.input_side, self.mean, self.std)
        logits, features = self.model(x, return_features=True)
        return (logits, *(features[name] for name in self.features))

    @property
    def output_names(self) -> list[str]:
        return [LOGITS, *self.features]


def export_graph(graph: ServingGraph, path: Path, opset: int) -> None:
    """Write one self-contained ONNX file (weights inside, no `.onnx.data`) with a dynamic batch."""
    example = torch.zeros(2, 1, IMAGE_SIDE, IMAGE_SIDE, dtype=torch.uint8)
    with warnings.catch_warnings():
        # torch.export's own internals raise FutureWarnings about its pytree API; nothing to act on here.
        warnings.simplefilter("ignore", FutureWarning)
        torch.onnx.export(
            graph.eval(), (example,), str(path), dynamo=True, external_data=False, opset_version=opset,
            input_names=[INPUT_NAME], output_names=graph.output_names,
            dynamic_shapes={"image": {0: torch.export.Dim("batch", min=1, max=4096)}}, verbose=False,
        )
