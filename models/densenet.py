"""DenseNet as the book trains it on Fashion-MNIST (input side 96): 4 dense blocks of 4 conv blocks, growth 32."""
from collections import OrderedDict

import torch
from torch import nn

from models.builders import FeatureTap, TapNet, register_model
from models.resnet import stem

INPUT_SIDE = 96

GROWTH_RATE = 32
CONVS_PER_BLOCK = 4


class ConvBlock(nn.Sequential):
    """BN → ReLU → conv3×3 p1 (pre-activation, as in the book)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(nn.BatchNorm2d(in_channels), nn.ReLU(),
                         nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1))


class DenseBlock(nn.Module):
    """Each conv block sees the concatenation of the block input and all earlier outputs.

    The output has `in_channels + num_convs * growth_rate` channels at the input's side.
    """

    def __init__(self, num_convs: int, in_channels: int, growth_rate: int):
        super().__init__()
        self.convs = nn.ModuleList(ConvBlock(in_channels + i * growth_rate, growth_rate) for i in range(num_convs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = torch.cat([x, conv(x)], dim=1)
        return x


class Transition(nn.Sequential):
    """BN → ReLU → conv1×1 → AvgPool(2, s2): the book halves both the channels and the side."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(nn.BatchNorm2d(in_channels), nn.ReLU(),
                         nn.Conv2d(in_channels, out_channels, kernel_size=1),
                         nn.AvgPool2d(kernel_size=2, stride=2))


def _dense(in_channels: int) -> DenseBlock:
    return DenseBlock(CONVS_PER_BLOCK, in_channels, GROWTH_RATE)


@register_model("densenet", input_side=INPUT_SIDE)
def densenet(*, num_classes: int = 10) -> TapNet:
    # Channels 64 -> 192 -> 96 -> 224 -> 112 -> 240 -> 120 -> 248: each dense block adds 4 × 32.
    stages = OrderedDict(
        stem=stem(),
        dense1=_dense(64),
        trans1=Transition(192, 96),
        dense2=_dense(96),
        trans2=Transition(224, 112),
        dense3=_dense(112),
        trans3=Transition(240, 120),
        dense4=_dense(120),
        gap=nn.Sequential(nn.BatchNorm2d(248), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()),
    )
    taps = [
        FeatureTap("stem", 64, 24),
        FeatureTap("dense1", 192, 24),
        FeatureTap("trans1", 96, 12),
        FeatureTap("dense2", 224, 12),
        FeatureTap("trans2", 112, 6),
        FeatureTap("dense3", 240, 6),
        FeatureTap("trans3", 120, 3),
        FeatureTap("dense4", 248, 3),
        FeatureTap("gap", 248, None),
    ]
    return TapNet(stages, nn.Linear(248, num_classes), input_side=INPUT_SIDE, feature_info=taps)
