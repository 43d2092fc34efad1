"""The serving graph: raw uint8 pixels in; logits and the requested feature taps out.

Preprocessing lives inside the graph (`models.data.to_model_input`, the function training
uses), so a client sends Fashion-MNIST pixels as they are and serving cannot drift from training.
"""
from __future__ import annotations

import functools
import logging
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn

from cnnserve.spec import IMAGE_SIDE, INPUT_NAME, LOGITS, Preprocessing
from models.data import to_model_input
from models.registry import TapNet

# The exporter logs one line per torchvision operator it cannot register; we use none of them.
logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)


def build_onnx_function_table_once() -> bool:
    """Make every `torch.onnx.export` after the first in this process reuse onnxscript's table of ONNX functions.

    The exporter rebuilds the table on every call, reading the source of each of onnxscript's ~500 ATen
    functions to learn its domain: the same table every time, at a cost larger than the rest of a small
    model's export. A process that exports several models (`--arch all`, the default repository's first
    build, the tests) builds it once.
    The table is reached through torch's private lazy-import module: with a torch that moved it, nothing
    changes but the speed (returns False)."""
    try:
        from torch.onnx._internal._lazy_import import onnxscript_apis
        build = onnxscript_apis.get_torchlib_ops
    except (ImportError, AttributeError):
        return False
    if not hasattr(build, "cache_info"):
        onnxscript_apis.get_torchlib_ops = functools.cache(build)     # found before the proxy's __getattr__
    return True


class ServingGraph(nn.Module):
    def __init__(self, model: TapNet, features: list[str], preprocessing: Preprocessing):
        super().__init__()
        self.model = model
        self.features = features
        self.preprocessing = preprocessing

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        p = self.preprocessing
        x = to_model_input(image, p.side, p.mean, p.std)
        logits, features = self.model(x, return_features=True)
        # NiN's classifier is the identity, so its logits *are* its `gap` tap; ONNX gives one value
        # one name, so the tap gets its own copy.
        return (logits, *(features[name].clone() if features[name] is logits else features[name]
                          for name in self.features))

    @property
    def output_names(self) -> list[str]:
        return [LOGITS, *self.features]


def export_graph(graph: ServingGraph, path: Path, opset: int) -> None:
    """Write one self-contained ONNX file (weights inside, no `.onnx.data`) with a dynamic batch.

    The exporter's own optimiser stays off, so BatchNorm stays a node with the model's own
    weights rather than being folded into the convolutions: weights that came from fp16 storage
    then stay exactly fp16 and `store_exact_fp16` can halve the file. ONNX Runtime folds the
    BatchNorms (and the casts) itself when it loads the model, so serving speed is unchanged.
    """
    example = torch.zeros(2, 1, IMAGE_SIDE, IMAGE_SIDE, dtype=torch.uint8)
    build_onnx_function_table_once()
    with warnings.catch_warnings():
        # torch.export's own internals raise FutureWarnings about its pytree API; nothing to act on here.
        warnings.simplefilter("ignore", FutureWarning)
        torch.onnx.export(
            graph.eval(), (example,), str(path), dynamo=True, external_data=False, opset_version=opset,
            input_names=[INPUT_NAME], output_names=graph.output_names,
            dynamic_shapes={INPUT_NAME: {0: torch.export.Dim("batch", min=1, max=4096)}}, verbose=False,
            optimize=False,
        )
    store_exact_fp16(path)


def store_exact_fp16(path: Path, min_elements: int = 16) -> int:
    """Store every float32 initializer whose values are exactly fp16 as fp16 plus a Cast; return how many.

    Lossless by construction (a value converts only when the round trip gives it back bit for bit),
    so an export of the shipped fp16 weights is half the size with identical outputs, and an
    export of an fp32 checkpoint is left as it is.
    """
    model = onnx.load(str(path))
    casts = []
    for initializer in model.graph.initializer:
        if initializer.data_type != onnx.TensorProto.FLOAT or np.prod(initializer.dims) < min_elements:
            continue
        values = numpy_helper.to_array(initializer)
        half = values.astype(np.float16)
        if not np.array_equal(half.astype(np.float32), values):
            continue
        name = initializer.name
        initializer.CopyFrom(numpy_helper.from_array(half, f"{name}.fp16"))
        casts.append(helper.make_node("Cast", [f"{name}.fp16"], [name], to=onnx.TensorProto.FLOAT,
                                      name=f"{name}.cast"))
    if casts:
        nodes = list(model.graph.node)
        del model.graph.node[:]
        model.graph.node.extend(casts + nodes)
        onnx.save(model, str(path))
    return len(casts)
