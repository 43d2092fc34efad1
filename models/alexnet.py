"""AlexNet as the book adapts it to Fashion-MNIST: one input channel, 224×224 input, 10 classes."""
from collections import OrderedDict

from torch import nn

from models.builders import FeatureTap, TapNet, register_model

INPUT_SIDE = 224


def _conv_relu(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
               padding: int = 0) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding),
                         nn.ReLU())


def fc_stage(in_features: int, out_features: int, flatten: bool = False) -> nn.Sequential:
    """Linear ReLU Dropout(0.5), optionally flattening first; VGG reuses this dense head."""
    layers = [nn.Flatten()] if flatten else []
    layers += [nn.Linear(in_features, out_features), nn.ReLU(), nn.Dropout(0.5)]
    return nn.Sequential(*layers)


@register_model("alexnet", input_side=INPUT_SIDE)
def alexnet(*, num_classes: int = 10) -> TapNet:
    stages = OrderedDict(
        conv1=_conv_relu(1, 96, kernel_size=11, stride=4, padding=1),
        pool1=nn.MaxPool2d(kernel_size=3, stride=2),
        conv2=_conv_relu(96, 256, kernel_size=5, padding=2),
        pool2=nn.MaxPool2d(kernel_size=3, stride=2),
        conv3=_conv_relu(256, 384, kernel_size=3, padding=1),
        conv4=_conv_relu(384, 384, kernel_size=3, padding=1),
        conv5=_conv_relu(384, 256, kernel_size=3, padding=1),
        pool3=nn.MaxPool2d(kernel_size=3, stride=2),
        fc1=fc_stage(256 * 5 * 5, 4096, flatten=True),
        fc2=fc_stage(4096, 4096),
    )
    # 224 -> 54 (k11 s4 p1) -> 26 -> 12 -> 5: each MaxPool(3, s2) maps n to (n - 3) // 2 + 1.
    taps = [
        FeatureTap("conv1", 96, 54),
        FeatureTap("pool1", 96, 26),
        FeatureTap("conv2", 256, 26),
        FeatureTap("pool2", 256, 12),
        FeatureTap("conv3", 384, 12),
        FeatureTap("conv4", 384, 12),
        FeatureTap("conv5", 256, 12),
        FeatureTap("pool3", 256, 5),
        FeatureTap("fc1", 4096, None),
        FeatureTap("fc2", 4096, None),
    ]
    return TapNet(stages, nn.Linear(4096, num_classes), input_side=INPUT_SIDE, feature_info=taps)
