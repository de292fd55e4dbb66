"""The CIFAR ResNet of He et al. (2016): ResNet-20 by default."""

from typing import Annotated

from torch import nn
from torchvision.models.resnet import BasicBlock

from cnnlab.checks import integer
from cnnlab.models import ModelSpec


def resnet_small(in_channels: int, num_classes: int, image_size: int, *,
                 blocks: Annotated[int, integer(1, 18)] = 3, width: Annotated[int, integer(4, 256)] = 16) -> nn.Module:
    """A 3x3 stem, three stages of `blocks` torchvision BasicBlocks at width, 2x and 4x channels
    (32, 16, 8 pixels), global pooling, one linear head. blocks=3: ResNet-20, 0.27M parameters:
    small enough to train on CIFAR-10 on a laptop CPU."""

    def stage(inputs: int, outputs: int, stride: int) -> nn.Sequential:
        shortcut = None if stride == 1 and inputs == outputs else nn.Sequential(
            nn.Conv2d(inputs, outputs, 1, stride=stride, bias=False), nn.BatchNorm2d(outputs))
        return nn.Sequential(BasicBlock(inputs, outputs, stride, shortcut),
                             *(BasicBlock(outputs, outputs) for _ in range(blocks - 1)))

    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
        stage(width, width, 1), stage(width, 2 * width, 2), stage(2 * width, 4 * width, 2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, num_classes),
    )


spec = ModelSpec(build=resnet_small, head="fc", attribution_layer="stage3",
                 layers=("stem", "stem_bn", "stem_relu", "stage1", "stage2", "stage3", "pool", "flatten", "fc"))
