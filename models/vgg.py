"""VGG-11 with every width divided by 4, as the book trains it on Fashion-MNIST (input side 224)."""
from collections import OrderedDict

import torch
from torch import nn

from models.alexnet import fc_stage
from models.builders import FeatureTap, TapNet, register_model

INPUT_SIDE = 224
HEAD_SIDE = INPUT_SIDE // 32    # five halvings: the dense head takes 128 × 7 × 7 features


class ToHeadSide(nn.Module):
    """Nothing at the model's input side; at a lower training side, resizes block5's map to the 7 × 7 the dense
    head takes (average pooling, which replicates cells when it enlarges), so VGG-11 can spend its first
    epochs at low resolution (models/recipes.py). The branch is settled when the model is traced at 224 px,
    so the exported graph has no node for it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if x.shape[-1] == HEAD_SIDE else nn.functional.adaptive_avg_pool2d(x, HEAD_SIDE)


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
        # ToHeadSide comes last in block5 so the parameters keep their names (block5.0, block5.2).
        block5=nn.Sequential(*_vgg_block(2, 128, 128), ToHeadSide()),
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
