"""VGG-11 with every width divided by 4, as the book trains it on Fashion-MNIST (input side 224)."""
from collections import OrderedDict

from torch import nn

from models.alexnet import fc_stage
from models.builders import FeatureTap, TapNet, register_model

INPUT_SIDE = 224


def _vgg_block(num_convs: int, in_channels: int, out_channels: int) -> nn.Sequential:
    """`num_convs` × (Conv 3×3 p1, ReLU), then MaxPool(2, s2) halves the side."""
    layers = []
    for i in range(num_convs):
        layers += [nn.Conv2d(in_channels if i == 0 else out_channels, out_channels, kernel_size=3, padding=1),
                   nn.ReLU()]
    layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
    return nn.Sequential(*layers)


@register_model("vgg11", input_side=INPUT_SIDE)
def vgg11(*, num_classes: int = 10) -> TapNet:
    stages = OrderedDict(
        block1=_vgg_block(1, 1, 16),
        block2=_vgg_block(1, 16, 32),
        block3=_vgg_block(2, 32, 64),
        block4=_vgg_block(2, 64, 128),
        block5=_vgg_block(2, 128, 128),
        # The dense part is AlexNet's, fed by 128 × 7 × 7 = 6272 features.
        fc1=fc_stage(128 * 7 * 7, 4096, flatten=True),
        fc2=fc_stage(4096, 4096),
    )
    taps = [
        FeatureTap("block1", 16, INPUT_SIDE // 2),
        FeatureTap("block2", 32, INPUT_SIDE // 4),
        FeatureTap("block3", 64, INPUT_SIDE // 8),
        FeatureTap("block4", 128, INPUT_SIDE // 16),
        FeatureTap("block5", 128, INPUT_SIDE // 32),
        FeatureTap("fc1", 4096, None),
        FeatureTap("fc2", 4096, None),
    ]
    return TapNet(stages, nn.Linear(4096, num_classes), input_side=INPUT_SIDE, feature_info=taps)
