"""Network in Network as the book defines it (input side 224).

NiN has no Linear layer: the last NiN block outputs one channel per class and a global average
pool turns each channel into a logit. So the last stage, `gap`, already is the logits vector and
the classifier is the identity.
"""
from collections import OrderedDict

from torch import nn

from models.builders import FeatureTap, TapNet, register_model

INPUT_SIDE = 224


def _nin_block(in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int) -> nn.Sequential:
    """One spatial conv followed by two 1×1 convs (a per-pixel MLP), each with a ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding), nn.ReLU(),
        nn.Conv2d(out_channels, out_channels, kernel_size=1), nn.ReLU(),
        nn.Conv2d(out_channels, out_channels, kernel_size=1), nn.ReLU(),
    )


@register_model("nin", input_side=INPUT_SIDE)
def nin(*, num_classes: int = 10) -> TapNet:
    stages = OrderedDict(
        nin1=_nin_block(1, 96, kernel_size=11, stride=4, padding=0),
        pool1=nn.MaxPool2d(kernel_size=3, stride=2),
        nin2=_nin_block(96, 256, kernel_size=5, stride=1, padding=2),
        pool2=nn.MaxPool2d(kernel_size=3, stride=2),
        nin3=_nin_block(256, 384, kernel_size=3, stride=1, padding=1),
        pool3=nn.Sequential(nn.MaxPool2d(kernel_size=3, stride=2), nn.Dropout(0.5)),
        nin4=_nin_block(384, num_classes, kernel_size=3, stride=1, padding=1),
        gap=nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()),
    )
    # 224 -> 54 (k11 s4) -> 26 -> 12 -> 5: each MaxPool(3, s2) maps n to (n - 3) // 2 + 1.
    taps = [
        FeatureTap("nin1", 96, 54),
        FeatureTap("pool1", 96, 26),
        FeatureTap("nin2", 256, 26),
        FeatureTap("pool2", 256, 12),
        FeatureTap("nin3", 384, 12),
        FeatureTap("pool3", 384, 5),
        FeatureTap("nin4", num_classes, 5),
        FeatureTap("gap", num_classes, None),
    ]
    return TapNet(stages, nn.Identity(), input_side=INPUT_SIDE, feature_info=taps)
