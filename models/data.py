"""The one preprocessing function (training, evaluation and the exported graph share it) and training
batches, over the torch-free dataset reader `cnnserve.fashion_mnist`."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from cnnserve.spec import IMAGE_SIDE

__all__ = ["batches", "to_model_input"]


def to_model_input(images: torch.Tensor, side: int, mean: float | None = None, std: float | None = None) -> torch.Tensor:
    """uint8 [N, 1, 28, 28] -> float [N, 1, side, side]: scale to [0, 1], resize, normalise.

    Training, evaluation and the exported ONNX graph all call this one function, so what a model
    sees in training and in serving cannot disagree. Bilinear with half-pixel centres is what the
    book's `transforms.Resize` does when it enlarges an image (antialiasing only acts when shrinking).
    """
    x = images.float() / 255.0
    if side != IMAGE_SIDE:
        x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)
    if mean is not None:
        x = (x - mean) / std
    return x


def batches(images: torch.Tensor, labels: torch.Tensor, batch_size: int, *, shuffle: bool,
            generator: torch.Generator | None = None):
    """Yield (uint8 images [B, 1, 28, 28], int64 labels [B]) from tensors already on the device."""
    n = len(images)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    order = order.to(images.device)
    for start in range(0, n, batch_size):
        index = order[start:start + batch_size]
        yield images[index].unsqueeze(1), labels[index]
