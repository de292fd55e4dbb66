"""airbench: the network of the CIFAR-10 speed records on GPUs (Keller Jordan's airbench, 2024),
for CIFAR-10 on a CPU: a frozen whitening stem set from the training images, three conv groups,
no residuals."""

from collections import OrderedDict
from typing import Annotated

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.checks import integer
from cnnlab.models import ModelSpec


class Scale(nn.Module):
    """Multiplies by a constant: the logits come out small, so the loss starts near uniform."""

    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


def batch_norm(channels: int) -> nn.BatchNorm2d:
    # the scale stays 1 and only the shift learns; running statistics follow the recent batches
    norm = nn.BatchNorm2d(channels, momentum=0.4)
    norm.weight.requires_grad_(False)
    return norm


def conv_group(inputs: int, outputs: int) -> nn.Sequential:
    """conv 3x3, max-pool, norm, GELU, conv 3x3, norm, GELU: pooling early halves the second conv."""
    return nn.Sequential(
        nn.Conv2d(inputs, outputs, 3, padding=1, bias=False), nn.MaxPool2d(2), batch_norm(outputs), nn.GELU(),
        nn.Conv2d(outputs, outputs, 3, padding=1, bias=False), batch_norm(outputs), nn.GELU(),
    )


def airbench(in_channels: int, num_classes: int, image_size: int, *,
             width: Annotated[int, integer(4, 256)] = 64) -> nn.Module:
    """A 2x2 whitening conv (2 x channels x 4 filters, frozen; `whiten` sets them from the data),
    GELU, conv groups of width, 4x and 4x channels (each halving the size), a max-pool over what is
    left, a linear head without bias, logits scaled by 1/9. width=64 is airbench94's network."""
    stem = nn.Conv2d(in_channels, 2 * in_channels * 4, 2)
    stem.weight.requires_grad_(False)  # the bias learns; the whitening filters stay as the data set them
    left = (image_size - 1) // 8
    return nn.Sequential(OrderedDict(
        whiten=stem, stem_act=nn.GELU(),
        group1=conv_group(stem.out_channels, width),
        group2=conv_group(width, 4 * width),
        group3=conv_group(4 * width, 4 * width),
        pool=nn.MaxPool2d(left), flatten=nn.Flatten(),
        head=nn.Linear(4 * width, num_classes, bias=False), scale=Scale(1 / 9),
    ))


@torch.no_grad()
def whiten(model: nn.Module, images: torch.Tensor, eps: float = 5e-4) -> None:
    """Set the stem's filters from normalised training images [N, C, H, W]: the eigenvectors of
    the 2x2 patches' covariance, each divided by the square root of its eigenvalue (and its
    negation beside it, so the GELU passes both signs). The first layer's output then has
    decorrelated channels of equal variance: the start that airbench found the largest speed-up."""
    stem = model.whiten
    size = stem.kernel_size
    patches = F.unfold(images.float().contiguous(), size).transpose(1, 2).flatten(0, 1)  # [patches, C*kh*kw]
    values, vectors = torch.linalg.eigh(patches.T @ patches / len(patches))
    filters = (vectors / (values + eps).sqrt()).T.reshape(-1, images.shape[1], *size)
    stem.weight.copy_(torch.cat([filters, -filters]).to(stem.weight))


# min_image_size: three halvings leave at least one pixel
spec = ModelSpec(build=airbench, head="head", attribution_layer="group3", min_image_size=9, init_from_data=whiten)
