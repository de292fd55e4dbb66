"""The 8/16-channel CNN of the SGD study (60 epochs of plain SGD)."""

from torch import nn

from cnnlab.models import ModelSpec


def cnn_small(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """Two conv blocks and a single linear head. It returns logits: the softmax lives inside the
    cross-entropy loss, never before it (the original study's bug)."""
    pooled = image_size // 4
    return nn.Sequential(
        nn.Conv2d(in_channels, 8, 3, padding=1), nn.MaxPool2d(2), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1), nn.MaxPool2d(2), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * pooled * pooled, num_classes),
    )


spec = ModelSpec(build=cnn_small, head="fc", attribution_layer="relu2", min_image_size=4,
                 layers=("conv1", "pool1", "relu1", "conv2", "pool2", "relu2", "flatten", "fc"))
