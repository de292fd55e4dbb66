"""A small CNN: the CNN of the MLP-vs-CNN study."""

from torch import nn

from cnnlab.models.blocks import Dropout
from cnnlab.models import ModelSpec


def cnn(in_channels: int, num_classes: int, image_size: int, *, dropout: Dropout = 0.25) -> nn.Module:
    """Two 3x3 conv blocks (16, 32 channels) with max-pooling, then a 128-unit hidden layer.

    Each block pools before its ReLU (the same values, a quarter of the ReLU's work: see
    cnnlab.models.blocks.textbook_order), so Grad-CAM reads the ReLU that ends the last block."""
    pooled = image_size // 4
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 3, padding=1), nn.MaxPool2d(2), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.MaxPool2d(2), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * pooled * pooled, 128), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(128, num_classes),
    )


spec = ModelSpec(build=cnn, head="fc2", attribution_layer="relu2", min_image_size=4,
                 layers=("conv1", "pool1", "relu1", "conv2", "pool2", "relu2", "flatten", "fc1", "relu3", "dropout",
                         "fc2"))
