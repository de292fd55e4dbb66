"""torchvision's AlexNet: the network of the AlexNet study (MNIST at 100x100)."""

from typing import Annotated

import torchvision
from torch import nn

from cnnlab.checks import integer
from cnnlab.models.blocks import Dropout, resize_input
from cnnlab.models import ModelSpec


def alexnet(in_channels: int, num_classes: int, image_size: int, *,
            input_size: Annotated[int, integer(63, 512)] = 100, dropout: Dropout = 0.5) -> nn.Module:
    """AlexNet with the first conv taking the data's channels and an n-class head; inputs are
    resized per batch to input_size (100, as in the AlexNet study: 11x11/4 needs room, and three
    stride-2 pools after it need at least 63 pixels). The resize is a forward pre-hook on
    torchvision's own class, so no resized copy of the data is stored and the state-dict keys stay
    torchvision's (ImageNet weights load as they are)."""
    model = torchvision.models.alexnet(num_classes=num_classes, dropout=dropout)
    model.features[0] = nn.Conv2d(in_channels, 64, kernel_size=11, stride=4, padding=2)
    model.input_size = input_size
    model.register_forward_pre_hook(resize_input)
    return model


spec = ModelSpec(build=alexnet, head="classifier.6", attribution_layer="features", pretrained="AlexNet_Weights")
