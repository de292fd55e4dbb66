"""speedrun: the network of the fastest public MNIST recipe (tuomaso/train_mnist_fast), trained
with cnnlab's data path for one epoch: benchmarks/speedrun.py races it against that recipe."""

from torch import nn

from cnnlab.models import ModelSpec


def speedrun(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """conv24 5x5, max-pool, ReLU, conv32 3x3, max-pool, ReLU, fc256, fc10.

    Pooling before the ReLU gives the same output as after it (both are monotone) on a quarter of
    the values. No padding: on a 28x28 digit the second block ends at 5x5."""
    after_conv2 = ((image_size - 4) // 2 - 2) // 2
    return nn.Sequential(
        nn.Conv2d(in_channels, 24, 5), nn.MaxPool2d(2), nn.ReLU(),
        nn.Conv2d(24, 32, 3), nn.MaxPool2d(2), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * after_conv2 * after_conv2, 256), nn.ReLU(),
        nn.Linear(256, num_classes),
    )


# Grad-CAM on the ReLU ending the second block; both convs and pools need at least 14 pixels
spec = ModelSpec(build=speedrun, head="fc2", attribution_layer="relu2", min_image_size=14,
                 layers=("conv1", "pool1", "relu1", "conv2", "pool2", "relu2", "flatten", "fc1", "relu3", "fc2"))
