"""A multilayer perceptron: the MLP of the MLP-vs-CNN study (784-256-256-10 on MNIST)."""

from typing import Annotated

from torch import nn

from cnnlab.checks import integer
from cnnlab.models.blocks import Dropout
from cnnlab.models import ModelSpec


def mlp(in_channels: int, num_classes: int, image_size: int, *,
        hidden: Annotated[int, integer(1, 65536)] = 256, dropout: Dropout = 0.2) -> nn.Module:
    """Two hidden layers of `hidden` units with ReLU and dropout."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_channels * image_size * image_size, hidden), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(hidden, num_classes),
    )


# no spatial maps: no Grad-CAM; model-agnostic attributions explain it
spec = ModelSpec(build=mlp, head="fc3", attribution_layer=None,
                 layers=("flatten", "fc1", "relu1", "dropout1", "fc2", "relu2", "dropout2", "fc3"))
