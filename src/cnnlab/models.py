"""Model registry: plain constructors, in the style of torchvision's builders.

Each constructor takes the data's shape positionally (channels, classes, image size) and its own
options as keyword-only arguments, each annotated with the check params.yaml applies to it
(`Annotated[type, checker]`, see checks.py); those options can be set in the model's section of
params.yaml. To add a model: write a constructor here and decorate it with @register_model.

Constructors import torch in their bodies, not at the top of this file: params.yaml is validated by
every stage, and reading the registry's options must not cost torch's import (seconds) in stages
that never build a model, such as the report.
"""

from typing import TYPE_CHECKING, Annotated, Callable

from cnnlab import CnnlabError
from cnnlab.checks import choice, integer, number

if TYPE_CHECKING:
    from torch import nn

MODELS: dict[str, Callable] = {}


def register_model(constructor: Callable) -> Callable:
    MODELS[constructor.__name__] = constructor
    return constructor


Dropout = Annotated[float, number(0, 1, high_open=True)]


@register_model
def mlp(in_channels: int, num_classes: int, image_size: int, *,
        hidden: Annotated[int, integer(1, 65536)] = 256, dropout: Dropout = 0.2) -> "nn.Module":
    """Two hidden layers (784-256-256-10 on MNIST)."""
    from torch import nn
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_channels * image_size * image_size, hidden), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(hidden, num_classes),
    )


# The conv blocks pool before the ReLU: relu(maxpool(x)) equals maxpool(relu(x)) exactly (both are
# monotonic), but the ReLU and its backward then touch a quarter of the values (benchmarks/README.md
# has the measured gain). Grad-CAM therefore hooks the ReLU that ends the last block (analyze.py).

@register_model
def cnn(in_channels: int, num_classes: int, image_size: int, *, dropout: Dropout = 0.25) -> "nn.Module":
    """Two 3x3 conv blocks (16, 32 channels) with max-pooling, then a 128-unit hidden layer."""
    from torch import nn
    pooled = image_size // 4
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 3, padding=1), nn.MaxPool2d(2), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.MaxPool2d(2), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * pooled * pooled, 128), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(128, num_classes),
    )


@register_model
def cnn_small(in_channels: int, num_classes: int, image_size: int) -> "nn.Module":
    """The 8/16-channel two-conv CNN with a single linear head (the SGD study's network). It returns
    logits: the softmax lives inside the cross-entropy loss, never before it."""
    from torch import nn
    pooled = image_size // 4
    return nn.Sequential(
        nn.Conv2d(in_channels, 8, 3, padding=1), nn.MaxPool2d(2), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1), nn.MaxPool2d(2), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * pooled * pooled, num_classes),
    )


@register_model
def lenet(in_channels: int, num_classes: int, image_size: int) -> "nn.Module":
    """LeNet-5-like: conv6 5x5 and conv16 5x5 with max-pooling, then fc120 and fc84 (ReLU throughout).

    The first conv pads by 2 so a 28x28 digit sees the 32x32 field LeNet-5 was designed for.
    """
    from torch import nn
    after_conv2 = (image_size // 2 - 4) // 2
    return nn.Sequential(
        nn.Conv2d(in_channels, 6, 5, padding=2), nn.MaxPool2d(2), nn.ReLU(),
        nn.Conv2d(6, 16, 5), nn.MaxPool2d(2), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * after_conv2 * after_conv2, 120), nn.ReLU(),
        nn.Linear(120, 84), nn.ReLU(),
        nn.Linear(84, num_classes),
    )


def _resize_input(module, inputs):
    """Forward pre-hook: resize each incoming batch to the module's `input_size`, on its device."""
    import torch.nn.functional as F
    x, size = inputs[0], module.input_size
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
    return (x,)


@register_model
def alexnet(in_channels: int, num_classes: int, image_size: int, *,
            input_size: Annotated[int, integer(63, 512)] = 100, dropout: Dropout = 0.5) -> "nn.Module":
    """torchvision AlexNet with the first conv taking the data's channels and an n-class head; inputs
    are resized per batch to input_size (100, as in the AlexNet study: 11x11/4 needs room, and three
    stride-2 pools after it need at least 63 pixels). The resize is a forward pre-hook on torchvision's
    own class, so no resized copy of the data is stored and the state-dict keys stay torchvision's."""
    import torchvision
    from torch import nn
    model = torchvision.models.alexnet(num_classes=num_classes, dropout=dropout)
    model.features[0] = nn.Conv2d(in_channels, 64, kernel_size=11, stride=4, padding=2)
    model.input_size = input_size
    model.register_forward_pre_hook(_resize_input)
    return model


@register_model
def resnet18(in_channels: int, num_classes: int, image_size: int, *,
             stem: Annotated[str, choice("cifar", "imagenet")] = "cifar") -> "nn.Module":
    """torchvision ResNet18 with the data's channels and classes. stem `imagenet` is torchvision's
    7x7/2 conv and max-pool (a 32x32 image leaves the stem at 8x8); `cifar` is a 3x3/1 conv and no
    max-pool, the usual choice for 32x32 images (the stem keeps all 32x32)."""
    import torchvision
    from torch import nn
    model = torchvision.models.resnet18(num_classes=num_classes)
    if stem == "cifar":
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    else:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return model


@register_model
def resnet_small(in_channels: int, num_classes: int, image_size: int, *,
                 blocks: Annotated[int, integer(1, 18)] = 3, width: Annotated[int, integer(4, 256)] = 16) -> "nn.Module":
    """The CIFAR ResNet of He et al. (2016): a 3x3 stem, three stages of `blocks` torchvision
    BasicBlocks at width, 2x and 4x channels (32, 16, 8 pixels), global pooling, one linear head.
    blocks=3: ResNet-20, 0.27M parameters: small enough to train on CIFAR-10 on a laptop CPU."""
    from torch import nn
    from torchvision.models.resnet import BasicBlock

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


def options(name: str) -> dict[str, Callable]:
    """The checker of each keyword-only option of a model's constructor, from its annotation."""
    import inspect
    checks = {}
    for arg in inspect.signature(MODELS[name]).parameters.values():
        if arg.kind is not arg.KEYWORD_ONLY:
            continue  # positional args (channels, classes, image size) come from the data
        metadata = getattr(arg.annotation, "__metadata__", ())
        if not metadata or not callable(metadata[0]):
            raise TypeError(f"models.{name}: option '{arg.name}' needs an Annotated[type, checker] annotation")
        checks[arg.name] = metadata[0]
    return checks


def build(name: str, in_channels: int, num_classes: int, image_size: int, **kwargs) -> "nn.Module":
    if name not in MODELS:
        raise CnnlabError(f"unknown model {name!r} (one of {', '.join(MODELS)})")
    return MODELS[name](in_channels, num_classes, image_size, **kwargs)


def textbook_order(model: "nn.Sequential") -> "nn.Sequential":
    """The same layers (shared weights) in the textbook conv -> ReLU -> pool order: the reference
    the pool-first blocks are checked and benchmarked against."""
    from torch import nn
    layers = list(model)
    for i in range(len(layers) - 1):
        if isinstance(layers[i], nn.MaxPool2d) and isinstance(layers[i + 1], nn.ReLU):
            layers[i], layers[i + 1] = layers[i + 1], layers[i]
    return nn.Sequential(*layers)
