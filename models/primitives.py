"""The book's convolution, pooling and batch-norm operations, written from scratch.

Plain tensor code with loops over output positions, as the book writes them: slow, but every
step is visible. Tests check each one against its `torch.nn` counterpart.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

IntOrPair = int | tuple[int, int]


def corr2d(X: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """2-D cross-correlation of one channel (what deep-learning libraries call convolution)."""
    h, w = K.shape
    Y = torch.zeros(X.shape[0] - h + 1, X.shape[1] - w + 1,
                    dtype=torch.result_type(X, K), device=X.device)
    for i in range(Y.shape[0]):
        for j in range(Y.shape[1]):
            Y[i, j] = (X[i:i + h, j:j + w] * K).sum()
    return Y


def conv2d_true(X: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Convolution in the mathematical sense: cross-correlation with the kernel flipped in both axes."""
    return corr2d(X, torch.flip(K, dims=(0, 1)))


def corr2d_multi_in(X: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """X is (c_in, h, w), K is (c_in, k_h, k_w); one output channel, summed over input channels."""
    return sum(corr2d(x, k) for x, k in zip(X, K))


def corr2d_multi_in_out(X: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """X is (c_in, h, w), K is (c_out, c_in, k_h, k_w); returns (c_out, h_out, w_out)."""
    return torch.stack([corr2d_multi_in(X, k) for k in K])


def corr2d_multi_in_out_1x1(X: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """A 1×1 convolution is a matrix product of (c_out, c_in) weights with (c_in, h·w) pixels."""
    c_in, h, w = X.shape
    c_out = K.shape[0]
    Y = K.reshape(c_out, c_in) @ X.reshape(c_in, h * w)
    return Y.reshape(c_out, h, w)


def _pair(value: IntOrPair) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def output_size(n: IntOrPair, k: IntOrPair, p: IntOrPair, s: IntOrPair = 1) -> IntOrPair:
    """⌊(n − k + 2p + s)/s⌋ with p padding on each side; a pair if any argument is a pair."""
    if all(isinstance(v, int) for v in (n, k, p, s)):
        return (n - k + 2 * p + s) // s
    return tuple(output_size(*per_axis) for per_axis in zip(_pair(n), _pair(k), _pair(p), _pair(s)))


_POOL_REDUCTIONS = {"max": torch.amax, "avg": torch.mean}


def pool2d(X: torch.Tensor, pool_size: IntOrPair, mode: str = "max",
           padding: IntOrPair = 0, stride: IntOrPair | None = None) -> torch.Tensor:
    """Pools the last two axes of X, so (H, W), (C, H, W) and (N, C, H, W) all pool channel-wise.

    The stride defaults to the window, as in nn.MaxPool2d. Max pools pad with -inf so padding
    never wins; average pools pad with zeros and count them (torch's count_include_pad=True).
    """
    if mode not in _POOL_REDUCTIONS:
        raise ValueError(f"mode must be 'max' or 'avg', got {mode!r}")
    reduce = _POOL_REDUCTIONS[mode]
    p_h, p_w = _pair(pool_size)
    s_h, s_w = _pair(pool_size if stride is None else stride)
    pad_h, pad_w = _pair(padding)
    fill = float("-inf") if mode == "max" else 0.0
    X = F.pad(X, (pad_w, pad_w, pad_h, pad_h), value=fill)
    out_h, out_w = output_size(tuple(X.shape[-2:]), (p_h, p_w), 0, (s_h, s_w))
    Y = X.new_empty(*X.shape[:-2], out_h, out_w)
    for i in range(out_h):
        for j in range(out_w):
            window = X[..., i * s_h:i * s_h + p_h, j * s_w:j * s_w + p_w]
            Y[..., i, j] = reduce(window, dim=(-2, -1))
    return Y


def batch_norm(X: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor,
               moving_mean: torch.Tensor, moving_var: torch.Tensor,
               eps: float = 1e-5, momentum: float = 0.1, training: bool = True,
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batch normalisation of 2-D (fully connected) or 4-D (conv) X; returns (Y, moving_mean, moving_var).

    gamma, beta and the moving statistics are shaped (1, C) or (1, C, 1, 1). Momentum follows
    torch, not the book: new = (1 - momentum) * old + momentum * batch, so torch's 0.1 is the
    book's 0.9. Like nn.BatchNorm, training normalises with the biased batch variance but feeds
    the unbiased one into moving_var.
    """
    if not training:
        X_hat = (X - moving_mean) / torch.sqrt(moving_var + eps)
        return gamma * X_hat + beta, moving_mean, moving_var
    if X.dim() not in (2, 4):
        raise ValueError(f"batch_norm takes 2-D or 4-D input, got {X.dim()}-D")
    per_feature_dims = (0,) if X.dim() == 2 else (0, 2, 3)
    mean = X.mean(dim=per_feature_dims, keepdim=True)
    var = ((X - mean) ** 2).mean(dim=per_feature_dims, keepdim=True)
    X_hat = (X - mean) / torch.sqrt(var + eps)
    values_per_feature = X.numel() // X.shape[1]
    with torch.no_grad():
        unbiased_var = var * values_per_feature / (values_per_feature - 1)
        moving_mean = (1 - momentum) * moving_mean + momentum * mean
        moving_var = (1 - momentum) * moving_var + momentum * unbiased_var
    return gamma * X_hat + beta, moving_mean, moving_var


class BatchNorm(nn.Module):
    """The book's BatchNorm layer; num_dims is 2 after a linear layer, 4 after a convolution."""

    def __init__(self, num_features: int, num_dims: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        if num_dims not in (2, 4):
            raise ValueError(f"num_dims must be 2 or 4, got {num_dims}")
        shape = (1, num_features) if num_dims == 2 else (1, num_features, 1, 1)
        self.eps = eps
        self.momentum = momentum
        self.gamma = nn.Parameter(torch.ones(shape))
        self.beta = nn.Parameter(torch.zeros(shape))
        self.register_buffer("moving_mean", torch.zeros(shape))
        self.register_buffer("moving_var", torch.ones(shape))

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        Y, self.moving_mean, self.moving_var = batch_norm(
            X, self.gamma, self.beta, self.moving_mean, self.moving_var,
            self.eps, self.momentum, self.training)
        return Y


class Conv2D(nn.Module):
    """The book's single-channel convolution layer: corr2d with a learnable kernel, plus a bias."""

    def __init__(self, kernel_size: tuple[int, int]):
        super().__init__()
        self.weight = nn.Parameter(torch.rand(kernel_size))
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return corr2d(x, self.weight) + self.bias


def edge_image() -> torch.Tensor:
    """The book's 6×8 image: ones with a black band in columns 2..5, so edges at 1→0 and 0→1."""
    X = torch.ones(6, 8)
    X[:, 2:6] = 0
    return X


def learn_edge_kernel(steps: int = 10, lr: float = 3e-2, seed: int = 0,
                      ) -> tuple[torch.Tensor, list[float]]:
    """Learns the edge kernel [[1, -1]] back from the image and its edges; returns (kernel 1×2, losses)."""
    X = edge_image()
    Y = corr2d(X, torch.tensor([[1.0, -1.0]]))
    X, Y = X.reshape(1, 1, 6, 8), Y.reshape(1, 1, 6, 7)
    conv = nn.Conv2d(1, 1, kernel_size=(1, 2), bias=False)
    # nn.Conv2d's own initialisation, drawn from a seeded generator so the result is reproducible.
    nn.init.kaiming_uniform_(conv.weight, a=math.sqrt(5), generator=torch.Generator().manual_seed(seed))
    losses = []
    for _ in range(steps):
        loss = ((conv(X) - Y) ** 2).sum()
        conv.zero_grad()
        loss.backward()
        with torch.no_grad():
            conv.weight -= lr * conv.weight.grad
        losses.append(loss.item())
    return conv.weight.detach().reshape(1, 2), losses
