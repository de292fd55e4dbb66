"""Model registry: plain constructors, in the style of torchvision's builders.

Each constructor takes the data's shape positionally (channels, classes, image size) and its own
options as keyword-only arguments; those options can be set in the model's section of params.yaml.
To add a model: write a constructor here and add it to MODELS.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn

from cnnlab import CnnlabError


def mlp(in_channels: int, num_classes: int, image_size: int, *, hidden: int = 256,
        dropout: float = 0.2) -> nn.Module:
    """Two hidden layers (784-256-256-10 on MNIST)."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_channels * image_size * image_size, hidden), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(hidden, num_classes),
    )


# The conv blocks pool before the ReLU: relu(maxpool(x)) equals maxpool(relu(x)) exactly (both are
# monotonic), but the ReLU and its backward then touch a quarter of the values. On 2 CPU cores this
# trains LeNet 1.1-1.3x and the CNN 1.3-1.6x faster (benchmarks/README.md).

def cnn(in_channels: int, num_classes: int, image_size: int, *, dropout: float = 0.25) -> nn.Module:
    """Two 3x3 conv blocks (16, 32 channels) with max-pooling, then a 128-unit hidden layer."""
    pooled = image_size // 4
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 3, padding=1), nn.MaxPool2d(2), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.MaxPool2d(2), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * pooled * pooled, 128), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(128, num_classes),
    )


def lenet(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """LeNet-5-like: conv6 5x5 and conv16 5x5 with max-pooling, then fc120 and fc84 (ReLU throughout).

    The first conv pads by 2 so a 28x28 digit sees the 32x32 field LeNet-5 was designed for.
    """
    after_conv2 = (image_size // 2 - 4) // 2
    return nn.Sequential(
        nn.Conv2d(in_channels, 6, 5, padding=2), nn.MaxPool2d(2), nn.ReLU(),
        nn.Conv2d(6, 16, 5), nn.MaxPool2d(2), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * after_conv2 * after_conv2, 120), nn.ReLU(),
        nn.Linear(120, 84), nn.ReLU(),
        nn.Linear(84, num_classes),
    )


MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": mlp,
    "cnn": cnn,
    "lenet": lenet,
}


def textbook_order(model: nn.Sequential) -> nn.Sequential:
    """The same layers (shared weights) in the textbook conv -> ReLU -> pool order: the reference
    the pool-first blocks are checked and benchmarked against."""
    layers = list(model)
    for i in range(len(layers) - 1):
        if isinstance(layers[i], nn.MaxPool2d) and isinstance(layers[i + 1], nn.ReLU):
            layers[i], layers[i + 1] = layers[i + 1], layers[i]
    return nn.Sequential(*layers)


def build(name: str, in_channels: int, num_classes: int, image_size: int, **options) -> nn.Module:
    return MODELS[name](in_channels, num_classes, image_size, **options)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def checkpoint(name: str, model: nn.Module, options: dict, info: dict) -> dict:
    """Everything needed to rebuild the model and its input normalisation, in plain types and tensors
    only, so it loads with torch.load(weights_only=True)."""
    return {
        "model": name, "options": options,
        "in_channels": info["channels"], "num_classes": len(info["classes"]), "image_size": info["image_size"],
        "classes": info["classes"], "mean": info["mean"], "std": info["std"],
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }


def load_checkpoint(path, device) -> tuple[nn.Module, dict]:
    path = Path(path)
    if not path.is_file():
        raise CnnlabError(f"{path}: missing; run the train stage first (dvc repro)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt or foreign file: unpickling is refused, not attempted
        raise CnnlabError(f"{path}: not a cnnlab checkpoint ({type(err).__name__})") from None
    if ckpt.get("model") not in MODELS:
        raise CnnlabError(f"{path}: unknown model {ckpt.get('model')!r}")
    model = build(ckpt["model"], ckpt["in_channels"], ckpt["num_classes"], ckpt["image_size"], **ckpt["options"])
    model.load_state_dict(ckpt["state_dict"])
    return model.to(device).eval(), ckpt
