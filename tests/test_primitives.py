"""The from-scratch primitives: the book's worked examples exactly, then agreement with torch.nn."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.testing import assert_close

from models.primitives import (
    BatchNorm,
    Conv2D,
    conv2d_true,
    corr2d,
    corr2d_multi_in,
    corr2d_multi_in_out,
    corr2d_multi_in_out_1x1,
    edge_image,
    learn_edge_kernel,
    output_size,
    pool2d,
)

X3 = torch.arange(9.0).reshape(3, 3)
X4 = torch.arange(16.0).reshape(4, 4)
EDGE_KERNEL = torch.tensor([[1.0, -1.0]])


# --- the book's worked examples ----------------------------------------------------------------

def test_corr2d_worked_example():
    assert_close(corr2d(X3, torch.tensor([[0.0, 1.0], [2.0, 3.0]])), torch.tensor([[19.0, 25.0], [37.0, 43.0]]))


def test_true_convolution_flips_the_kernel():
    # The seed notes print 24 for the last value; 4·3 + 5·2 + 7·1 + 8·0 = 29 is correct.
    assert_close(conv2d_true(X3, torch.tensor([[0.0, 1.0], [2.0, 3.0]])), torch.tensor([[5.0, 11.0], [23.0, 29.0]]))


def test_edge_detection_finds_vertical_edges_only():
    X = edge_image()
    assert_close(corr2d(X, EDGE_KERNEL), torch.tensor([[0.0, 1, 0, 0, 0, -1, 0]]).expand(6, 7))
    assert_close(corr2d(X.T, EDGE_KERNEL), torch.zeros(8, 5))


def test_learned_edge_kernel_approaches_the_true_one():
    kernel, losses = learn_edge_kernel()
    assert kernel.shape == (1, 2)
    assert_close(kernel, EDGE_KERNEL, atol=0.1, rtol=0)
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("n, k, p, s, expected", [
    (8, 3, 1, 1, 8),
    ((8, 8), (5, 3), (2, 1), 1, (8, 8)),
    (8, 3, 1, 2, 4),
    ((8, 8), (3, 5), (0, 1), (3, 4), (2, 2)),
    (240, 5, 2, 3, 80),
])
def test_output_size_worked_examples(n, k, p, s, expected):
    assert output_size(n, k, p, s) == expected


def test_pooling_worked_examples():
    assert_close(pool2d(X3, 2, "max", stride=1), torch.tensor([[4.0, 5.0], [7.0, 8.0]]))
    assert_close(pool2d(X3, 2, "avg", stride=1), torch.tensor([[2.0, 3.0], [5.0, 6.0]]))
    assert_close(pool2d(X4, 3), torch.tensor([[10.0]]))
    assert_close(pool2d(X4, 3, padding=1, stride=2), torch.tensor([[5.0, 7.0], [13.0, 15.0]]))


def test_pooling_is_per_channel():
    two_channels = torch.stack([X4, X4 + 1]).unsqueeze(0)
    expected = torch.tensor([[[[5.0, 7.0], [13.0, 15.0]], [[6.0, 8.0], [14.0, 16.0]]]])
    assert_close(pool2d(two_channels, 3, padding=1, stride=2), expected)


def test_pool2d_rejects_unknown_mode():
    with pytest.raises(ValueError, match="mode"):
        pool2d(X4, 2, "median")


def test_conv_parameter_count_example():
    assert nn.Conv2d(3, 10, kernel_size=3).weight.numel() == 3 * 3 * 3 * 10


# --- agreement with torch.nn on random inputs --------------------------------------------------

@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_corr2d_matches_conv2d():
    X, K = torch.randn(6, 7), torch.randn(3, 2)
    assert_close(corr2d(X, K), F.conv2d(X[None, None], K[None, None])[0, 0])


def test_multi_channel_matches_conv2d():
    X, K = torch.randn(3, 6, 5), torch.randn(4, 3, 2, 3)
    assert_close(corr2d_multi_in(X, K[0]), F.conv2d(X[None], K[:1])[0, 0])
    assert_close(corr2d_multi_in_out(X, K), F.conv2d(X[None], K)[0])


def test_1x1_matmul_matches_conv2d():
    X, K = torch.randn(3, 4, 5), torch.randn(2, 3, 1, 1)
    assert_close(corr2d_multi_in_out_1x1(X, K), F.conv2d(X[None], K)[0])
    assert_close(corr2d_multi_in_out_1x1(X, K), corr2d_multi_in_out(X, K))


@pytest.mark.parametrize("kernel, padding, stride", [(2, 0, None), (3, 1, 2), ((3, 2), (1, 0), (2, 1))])
@pytest.mark.parametrize("mode, torch_pool", [("max", nn.MaxPool2d), ("avg", nn.AvgPool2d)])
def test_pool2d_matches_torch(kernel, padding, stride, mode, torch_pool):
    X = torch.randn(2, 3, 7, 6)
    expected = torch_pool(kernel, stride=stride, padding=padding)(X)
    assert_close(pool2d(X, kernel, mode, padding=padding, stride=stride), expected)
    assert_close(pool2d(X[0], kernel, mode, padding=padding, stride=stride), expected[0])


@pytest.mark.parametrize("n, k, p, s", [(28, 5, 2, 1), (224, 11, 1, 4), ((9, 7), (3, 2), (1, 0), (2, 3))])
def test_output_size_matches_conv2d(n, k, p, s):
    side = (n, n) if isinstance(n, int) else n
    out = nn.Conv2d(1, 1, kernel_size=k, padding=p, stride=s)(torch.zeros(1, 1, *side))
    expected = tuple(out.shape[-2:])
    assert output_size(n, k, p, s) == (expected[0] if isinstance(n, int) else expected)


@pytest.mark.parametrize("input_shape, torch_bn", [((4, 3, 5, 5), nn.BatchNorm2d), ((8, 3), nn.BatchNorm1d)])
def test_batch_norm_matches_torch(input_shape, torch_bn):
    ours = BatchNorm(3, num_dims=len(input_shape))
    reference = torch_bn(3)
    with torch.no_grad():
        ours.gamma.copy_(torch.randn_like(ours.gamma))
        ours.beta.copy_(torch.randn_like(ours.beta))
        reference.weight.copy_(ours.gamma.flatten())
        reference.bias.copy_(ours.beta.flatten())
    for _ in range(3):
        X = torch.randn(input_shape) * 2 + 1
        assert_close(ours(X), reference(X))
    assert_close(ours.moving_mean.flatten(), reference.running_mean)
    assert_close(ours.moving_var.flatten(), reference.running_var)

    X = torch.randn(input_shape)
    ours(X).square().sum().backward()
    reference(X).square().sum().backward()
    assert_close(ours.gamma.grad.flatten(), reference.weight.grad)
    assert_close(ours.beta.grad.flatten(), reference.bias.grad)

    ours.eval(), reference.eval()
    X = torch.randn(input_shape)
    assert_close(ours(X), reference(X))


def test_conv2d_module_is_corr2d_plus_bias_and_learns():
    layer = Conv2D((2, 3))
    x = torch.randn(5, 6)
    y = layer(x)
    assert_close(y, corr2d(x, layer.weight.detach()) + layer.bias.detach())
    y.sum().backward()
    assert layer.weight.grad.shape == (2, 3)
    assert_close(layer.bias.grad, torch.tensor([float(y.numel())]))
