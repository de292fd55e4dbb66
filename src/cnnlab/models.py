"""Model registry: plain constructors, in the style of torchvision's builders.

Each constructor takes the data's shape positionally (channels, classes, image size) and its own
options as keyword-only arguments; those options can be set in the model's section of params.yaml.
To add a model: write a constructor here and add it to MODELS.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Literal

import torch
import torch.nn.functional as F
import torchvision
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


def cnn_small(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """The 8/16-channel two-conv CNN with a single linear head (the SGD study's network). It returns
    logits: the softmax lives inside the cross-entropy loss, never before it."""
    pooled = image_size // 4
    return nn.Sequential(
        nn.Conv2d(in_channels, 8, 3, padding=1), nn.MaxPool2d(2), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1), nn.MaxPool2d(2), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * pooled * pooled, num_classes),
    )


class ResizedAlexNet(torchvision.models.AlexNet):
    """torchvision's AlexNet that resizes each incoming batch to `input_size` on the device it runs
    on, so no resized copy of the dataset is ever stored. A subclass (not a wrapper) keeps
    torchvision's state-dict keys, so torchvision-layout weights load unchanged."""

    def __init__(self, input_size: int, **kwargs):
        super().__init__(**kwargs)
        self.input_size = input_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear",
                              align_corners=False, antialias=False)
        return super().forward(x)


def alexnet(in_channels: int, num_classes: int, image_size: int, *, input_size: int = 100,
            dropout: float = 0.5) -> nn.Module:
    """torchvision AlexNet with the first conv taking the data's channels and an n-class head; inputs
    are resized per batch to input_size (100, as in the AlexNet study: 11x11/4 needs room)."""
    if input_size < 63:
        raise CnnlabError(f"params.yaml: alexnet.input_size must be >= 63 (three stride-2 pools after "
                          f"an 11x11/4 conv); got {input_size}")
    model = ResizedAlexNet(input_size, num_classes=num_classes, dropout=dropout)
    model.features[0] = nn.Conv2d(in_channels, 64, kernel_size=11, stride=4, padding=2)
    return model


def resnet18(in_channels: int, num_classes: int, image_size: int, *,
             stem: Literal["cifar", "imagenet"] = "cifar") -> nn.Module:
    """torchvision ResNet18 with the data's channels and classes. stem `imagenet` is torchvision's
    7x7/2 conv and max-pool (a 32x32 image leaves the stem at 8x8); `cifar` is a 3x3/1 conv and no
    max-pool, the usual choice for 32x32 images (the stem keeps all 32x32)."""
    model = torchvision.models.resnet18(num_classes=num_classes)
    if stem == "cifar":
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    else:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return model


MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": mlp,
    "cnn": cnn,
    "cnn_small": cnn_small,
    "lenet": lenet,
    "alexnet": alexnet,
    "resnet18": resnet18,
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


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Start from a local state dict (a plain one, or a cnnlab checkpoint's). Nothing is fetched from
    a hub; the file is read with weights_only=True, so it cannot run code."""
    path = Path(path)
    if not path.is_file():
        raise CnnlabError(f"{path}: weights file not found (set the model's `weights:` to a local state dict)")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CnnlabError(f"{path}: not a state dict ({type(err).__name__})") from None
    state = blob.get("state_dict", blob) if isinstance(blob, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CnnlabError(f"{path}: not a state dict (expected a mapping of names to tensors)")
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
             if k in state and state[k].shape != v.shape]
    for problem, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", wrong)):
        if keys:
            raise CnnlabError(f"{path}: does not fit this model: {len(keys)} {problem} "
                              f"(first: {keys[0]}); check the dataset's channels and classes")
    model.load_state_dict(state)


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
