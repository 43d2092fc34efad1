"""ResNet-18 as the book trains it on Fashion-MNIST (input side 96)."""
from collections import OrderedDict

import torch
from torch import nn

from models.builders import FeatureTap, TapNet, register_model

INPUT_SIDE = 96


class Residual(nn.Module):
    """conv3×3 → BN → ReLU → conv3×3 → BN, plus the shortcut, then ReLU.

    When the block changes the side (`stride` 2) or the width, the shortcut is the book's 1×1
    conv with the same stride (no BN on it); otherwise it is the input itself.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = (nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride)
                         if stride != 1 or in_channels != out_channels else nn.Identity())
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu1(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu2(y + self.shortcut(x))


def _make_stage(in_channels: int, out_channels: int, num_blocks: int, stride: int) -> nn.Sequential:
    """`num_blocks` residual blocks; only the first one may change the side and the width."""
    blocks = [Residual(in_channels, out_channels, stride=stride)]
    blocks += [Residual(out_channels, out_channels) for _ in range(num_blocks - 1)]
    return nn.Sequential(*blocks)


def stem() -> nn.Sequential:
    """Conv 7×7 s2 → BN → ReLU → MaxPool(3, s2, p1): a quarter of the side. DenseNet shares it."""
    return nn.Sequential(
        nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3), nn.BatchNorm2d(64), nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
    )


@register_model("resnet18", input_side=INPUT_SIDE)
def resnet18(*, num_classes: int = 10) -> TapNet:
    stages = OrderedDict(
        stem=stem(),
        stage1=_make_stage(64, 64, num_blocks=2, stride=1),
        stage2=_make_stage(64, 128, num_blocks=2, stride=2),
        stage3=_make_stage(128, 256, num_blocks=2, stride=2),
        stage4=_make_stage(256, 512, num_blocks=2, stride=2),
        gap=nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()),
    )
    taps = [
        FeatureTap("stem", 64, INPUT_SIDE // 4),
        FeatureTap("stage1", 64, INPUT_SIDE // 4),
        FeatureTap("stage2", 128, INPUT_SIDE // 8),
        FeatureTap("stage3", 256, INPUT_SIDE // 16),
        FeatureTap("stage4", 512, INPUT_SIDE // 32),
        FeatureTap("gap", 512, None),
    ]
    return TapNet(stages, nn.Linear(512, num_classes), input_side=INPUT_SIDE, feature_info=taps)
