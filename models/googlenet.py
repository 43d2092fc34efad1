"""GoogLeNet as the book trains it on Fashion-MNIST (input side 96)."""
from collections import OrderedDict

import torch
from torch import nn

from models.builders import FeatureTap, TapNet, register_model

INPUT_SIDE = 96


class Inception(nn.Module):
    """Four parallel branches whose outputs are concatenated on channels.

    branch1: 1×1 `c1` · branch2: 1×1 `c2[0]` → 3×3 `c2[1]` · branch3: 1×1 `c3[0]` → 5×5 `c3[1]` ·
    branch4: MaxPool(3, s1) → 1×1 `c4`. Every branch keeps the side, so the output has
    c1 + c2[1] + c3[1] + c4 channels.
    """

    def __init__(self, in_channels: int, c1: int, c2: tuple[int, int], c3: tuple[int, int], c4: int):
        super().__init__()
        self.branch1 = nn.Sequential(nn.Conv2d(in_channels, c1, kernel_size=1), nn.ReLU())
        self.branch2 = nn.Sequential(
            nn.Conv2d(in_channels, c2[0], kernel_size=1), nn.ReLU(),
            nn.Conv2d(c2[0], c2[1], kernel_size=3, padding=1), nn.ReLU(),
        )
        self.branch3 = nn.Sequential(
            nn.Conv2d(in_channels, c3[0], kernel_size=1), nn.ReLU(),
            nn.Conv2d(c3[0], c3[1], kernel_size=5, padding=2), nn.ReLU(),
        )
        self.branch4 = nn.Sequential(
            nn.MaxPool2d(kernel_size=3, stride=1, padding=1),
            nn.Conv2d(in_channels, c4, kernel_size=1), nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], dim=1)


def _halving_pool() -> nn.MaxPool2d:
    return nn.MaxPool2d(kernel_size=3, stride=2, padding=1)


@register_model("googlenet", input_side=INPUT_SIDE)
def googlenet(*, num_classes: int = 10) -> TapNet:
    stages = OrderedDict(
        b1=nn.Sequential(nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3), nn.ReLU(), _halving_pool()),
        b2=nn.Sequential(
            nn.Conv2d(64, 64, kernel_size=1), nn.ReLU(),
            nn.Conv2d(64, 192, kernel_size=3, padding=1), nn.ReLU(),
            _halving_pool(),
        ),
        inception3a=Inception(192, 64, (96, 128), (16, 32), 32),
        inception3b=Inception(256, 128, (128, 192), (32, 96), 64),
        pool3=_halving_pool(),
        inception4a=Inception(480, 192, (96, 208), (16, 48), 64),
        inception4b=Inception(512, 160, (112, 224), (24, 64), 64),
        inception4c=Inception(512, 128, (128, 256), (24, 64), 64),
        inception4d=Inception(512, 112, (144, 288), (32, 64), 64),
        inception4e=Inception(528, 256, (160, 320), (32, 128), 128),
        pool4=_halving_pool(),
        inception5a=Inception(832, 256, (160, 320), (32, 128), 128),
        inception5b=Inception(832, 384, (192, 384), (48, 128), 128),
        gap=nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()),
    )
    # 96 -> 48 (conv s2) -> 24 -> 12 -> 6 -> 3: each MaxPool(3, s2, p1) halves an even side.
    taps = [
        FeatureTap("b1", 64, 24),
        FeatureTap("b2", 192, 12),
        FeatureTap("inception3a", 64 + 128 + 32 + 32, 12),
        FeatureTap("inception3b", 128 + 192 + 96 + 64, 12),
        FeatureTap("pool3", 480, 6),
        FeatureTap("inception4a", 192 + 208 + 48 + 64, 6),
        FeatureTap("inception4b", 160 + 224 + 64 + 64, 6),
        FeatureTap("inception4c", 128 + 256 + 64 + 64, 6),
        FeatureTap("inception4d", 112 + 288 + 64 + 64, 6),
        FeatureTap("inception4e", 256 + 320 + 128 + 128, 6),
        FeatureTap("pool4", 832, 3),
        FeatureTap("inception5a", 256 + 320 + 128 + 128, 3),
        FeatureTap("inception5b", 384 + 384 + 128 + 128, 3),
        FeatureTap("gap", 1024, None),
    ]
    return TapNet(stages, nn.Linear(1024, num_classes), input_side=INPUT_SIDE, feature_info=taps)
