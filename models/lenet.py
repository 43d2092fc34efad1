"""LeNet-5 and LeNet with batch normalisation, as the book defines them (input side 28)."""
from collections import OrderedDict

from torch import nn

from models.builders import FeatureTap, TapNet, register_model

INPUT_SIDE = 28


def _conv_stage(in_channels: int, out_channels: int, padding: int, batch_norm: bool) -> nn.Sequential:
    layers = [nn.Conv2d(in_channels, out_channels, kernel_size=5, padding=padding)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(out_channels))
    layers.append(nn.Sigmoid())
    return nn.Sequential(*layers)


def _dense_stage(in_features: int, out_features: int, batch_norm: bool, flatten: bool = False) -> nn.Sequential:
    layers = [nn.Flatten()] if flatten else []
    layers.append(nn.Linear(in_features, out_features))
    if batch_norm:
        layers.append(nn.BatchNorm1d(out_features))
    layers.append(nn.Sigmoid())
    return nn.Sequential(*layers)


def _lenet(batch_norm: bool, num_classes: int) -> TapNet:
    # The book pads the first conv of LeNet (28 -> 28) but not that of BN-LeNet (28 -> 24).
    padding = 0 if batch_norm else 2
    side1 = 28 if padding else 24
    side2 = (side1 // 2 - 4) // 2
    stages = OrderedDict(
        conv1=_conv_stage(1, 6, padding, batch_norm),
        pool1=nn.AvgPool2d(kernel_size=2, stride=2),
        conv2=_conv_stage(6, 16, 0, batch_norm),
        pool2=nn.AvgPool2d(kernel_size=2, stride=2),
        fc1=_dense_stage(16 * side2 * side2, 120, batch_norm, flatten=True),
        fc2=_dense_stage(120, 84, batch_norm),
    )
    taps = [
        FeatureTap("conv1", 6, side1),
        FeatureTap("pool1", 6, side1 // 2),
        FeatureTap("conv2", 16, side1 // 2 - 4),
        FeatureTap("pool2", 16, side2),
        FeatureTap("fc1", 120, None),
        FeatureTap("fc2", 84, None),
    ]
    return TapNet(stages, nn.Linear(84, num_classes), input_side=INPUT_SIDE, feature_info=taps)


@register_model("lenet", input_side=INPUT_SIDE)
def lenet(*, num_classes: int = 10) -> TapNet:
    return _lenet(batch_norm=False, num_classes=num_classes)


@register_model("lenet_bn", input_side=INPUT_SIDE)
def lenet_bn(*, num_classes: int = 10) -> TapNet:
    return _lenet(batch_norm=True, num_classes=num_classes)
