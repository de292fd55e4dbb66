"""LeNet-5-like: the network of the LeNet-with-hooks study."""

from torch import nn

from cnnlab.models import ModelSpec


def lenet(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """conv6 5x5 and conv16 5x5 with max-pooling, then fc120 and fc84 (ReLU throughout).

    The first conv pads by 2 so a 28x28 digit sees the 32x32 field LeNet-5 was designed for."""
    after_conv2 = (image_size // 2 - 4) // 2
    return nn.Sequential(
        nn.Conv2d(in_channels, 6, 5, padding=2), nn.MaxPool2d(2), nn.ReLU(),
        nn.Conv2d(6, 16, 5), nn.MaxPool2d(2), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * after_conv2 * after_conv2, 120), nn.ReLU(),
        nn.Linear(120, 84), nn.ReLU(),
        nn.Linear(84, num_classes),
    )


# Grad-CAM on the ReLU ending the second block (16 maps of 5x5 on MNIST); the 5x5 conv needs
# images of at least 12 pixels to leave one
spec = ModelSpec(build=lenet, head="fc3", attribution_layer="relu2", min_image_size=12,
                 layers=("conv1", "pool1", "relu1", "conv2", "pool2", "relu2", "flatten", "fc1", "relu3", "fc2", "relu4",
                         "fc3"))
