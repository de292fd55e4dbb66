"""torchvision's ResNet18: the network of the ResNet18 CIFAR-10 study."""

from typing import Annotated

import torchvision
from torch import nn

from cnnlab.checks import choice
from cnnlab.models import ModelSpec


def resnet18(in_channels: int, num_classes: int, image_size: int, *,
             stem: Annotated[str, choice("cifar", "imagenet")] = "cifar") -> nn.Module:
    """ResNet18 with the data's channels and classes. stem `imagenet` is torchvision's 7x7/2 conv and
    max-pool (a 32x32 image leaves the stem at 8x8); `cifar` is a 3x3/1 conv and no max-pool, the
    usual choice for 32x32 images (the stem keeps all 32x32)."""
    model = torchvision.models.resnet18(num_classes=num_classes)
    if stem == "cifar":
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    else:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return model


spec = ModelSpec(build=resnet18, head="fc", attribution_layer="layer4", pretrained="ResNet18_Weights")
