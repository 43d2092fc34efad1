"""Parity between ONNX Runtime and the PyTorch graph it came from, in the style of optimum's
exporter validation: compare every output by name, then shape, then values within a stated
tolerance; collect all failures and raise once."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnxruntime as ort
import torch

from cnnserve.spec import INPUT_NAME
from export.graph import ServingGraph

ATOL, RTOL = 1e-4, 1e-3   # |ort - torch| <= ATOL + RTOL * |torch|, elementwise


class ParityError(RuntimeError):
    pass


@dataclass
class OutputParity:
    max_abs: float = 0.0
    max_rel: float = 0.0


def check_parity(graph: ServingGraph, session: ort.InferenceSession, batches: list[np.ndarray]) -> dict:
    """Run `graph` and `session` on each uint8 batch; return per-output worst differences, or raise."""
    failures: list[str] = []
    worst = {name: OutputParity() for name in graph.output_names}
    session_names = [o.name for o in session.get_outputs()]
    if session_names != graph.output_names:
        raise ParityError(f"ONNX outputs {session_names} differ from the expected {graph.output_names}")
    for images in batches:
        with torch.no_grad():
            expected = [t.numpy() for t in graph(torch.from_numpy(images))]
        actual = session.run(None, {INPUT_NAME: images})
        for name, want, got in zip(graph.output_names, expected, actual):
            label = f"{name} at batch {len(images)}"
            if want.shape != got.shape:
                failures.append(f"{label}: shape {got.shape}, expected {want.shape}")
                continue
            abs_diff = np.abs(got.astype(np.float64) - want)
            rel_diff = abs_diff / np.maximum(np.abs(want), 1e-6)
            worst[name].max_abs = max(worst[name].max_abs, float(abs_diff.max()))
            worst[name].max_rel = max(worst[name].max_rel, float(rel_diff.max()))
            bad = abs_diff > ATOL + RTOL * np.abs(want)
            if bad.any():
                failures.append(f"{label}: {int(bad.sum())} of {bad.size} values off by up to "
                                f"{abs_diff.max():.3g} (tolerance {ATOL} + {RTOL}·|value|)")
    if failures:
        raise ParityError("ONNX Runtime disagrees with PyTorch:\n  " + "\n  ".join(failures))
    return {"tolerance": {"atol": ATOL, "rtol": RTOL}, "batches": [len(b) for b in batches], "passed": True,
            "outputs": {name: vars(w) for name, w in worst.items()}}
