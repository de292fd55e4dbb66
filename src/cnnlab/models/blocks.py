"""Building blocks shared by several models of the zoo."""

from __future__ import annotations

from typing import Annotated

import torch.nn.functional as F
from torch import nn

from cnnlab.checks import number

Dropout = Annotated[float, number(0, 1, high_open=True)]


def resize_input(module: nn.Module, inputs):
    """Forward pre-hook: resize each incoming batch to the module's `input_size`, on its device."""
    x, size = inputs[0], module.input_size
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
    return (x,)


def textbook_order(model: nn.Sequential) -> nn.Sequential:
    """The same layers (shared weights) in the textbook conv -> ReLU -> pool order: the reference
    the pool-first blocks are checked and benchmarked against.

    cnnlab's conv blocks pool before the ReLU: relu(maxpool(x)) equals maxpool(relu(x)) exactly (both
    are monotonic), but the ReLU and its backward then touch a quarter of the values."""
    layers = list(model)
    for i in range(len(layers) - 1):
        if isinstance(layers[i], nn.MaxPool2d) and isinstance(layers[i + 1], nn.ReLU):
            layers[i], layers[i + 1] = layers[i + 1], layers[i]
    return nn.Sequential(*layers)
