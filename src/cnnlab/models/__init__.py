"""The model zoo: one module per model in this folder, each a constructor and a `spec = ModelSpec(...)`
declaring what the rest of cnnlab needs (its head, the layer Grad-CAM explains, pretrained weights, the
smallest image it takes): nothing is guessed from a model's structure. A model's module is imported
only when it is built, so editing one reruns only its stages. Adding one: docs/extending.md."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from cnnlab import CnnlabError

if TYPE_CHECKING:
    import torch
    from torch import nn

NOT_MODELS = ("blocks",)  # shared layers beside the models
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelSpec:
    """What a model declares beside its constructor.

    build: (in_channels, num_classes, image_size, *, options) -> nn.Module; its keyword-only
        options are annotated `Annotated[type, checker]` (cnnlab/checks.py) and settable in params.yaml.
    head: the submodule name of the classifier's last layer: `train.freeze` trains only it, and its
        input is the embedding that t-SNE and the silhouette scores read.
    attribution_layer: the submodule whose output Grad-CAM weighs (the last spatial block); None for
        a network without spatial maps (an MLP), explained by model-agnostic methods only.
    pretrained: torchvision's weights enum for `weights: imagenet` (e.g. "ResNet18_Weights"), or None.
    pretrained_mean, pretrained_std: the RGB normalisation those weights were trained with.
    min_image_size: the smallest data.image_size the architecture accepts.
    init_from_data: (model, normalised training images) -> None, or None: a start computed from
        the data (airbench's whitening stem), run once before a fit that starts from scratch.
    layers: the names of a Sequential's layers, in order, so that `head` and `attribution_layer` name
        them ("fc3", "relu2") rather than count them.
    """
    build: Callable[..., "nn.Module"]
    head: str
    attribution_layer: str | None
    pretrained: str | None = None
    pretrained_mean: tuple[float, ...] = IMAGENET_MEAN
    pretrained_std: tuple[float, ...] = IMAGENET_STD
    min_image_size: int = 1
    init_from_data: Callable[["nn.Module", "torch.Tensor"], None] | None = None
    layers: tuple[str, ...] = ()

    def path(self, layer: str | None) -> str | None:
        """Where a layer the spec names sits in the built model: its position when `layers` names a
        Sequential's layers in order (the checkpoint's keys stay the Sequential's), else its own path."""
        return str(self.layers.index(layer)) if layer in self.layers else layer


def names() -> tuple[str, ...]:
    """Every model of the zoo: the modules of this folder (listed, not imported)."""
    return tuple(sorted(m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)])
                        if not m.name.startswith("_") and m.name not in NOT_MODELS))


def spec(name: str) -> ModelSpec:
    """The spec a model's module declares (importing that module, and only that one)."""
    if name not in names():
        raise CnnlabError(f"unknown model {name!r} (one of {', '.join(names())})")
    found = getattr(importlib.import_module(f"{__name__}.{name}"), "spec", None)
    if not isinstance(found, ModelSpec):
        raise TypeError(f"cnnlab/models/{name}.py must define spec = ModelSpec(...)")
    return found


def options(name: str) -> dict[str, Callable]:
    """The checker of each keyword-only option of a model's constructor, from its annotation."""
    checks = {}
    for arg in inspect.signature(spec(name).build).parameters.values():
        if arg.kind is not arg.KEYWORD_ONLY:
            continue  # positional args (channels, classes, image size) come from the data
        metadata = getattr(arg.annotation, "__metadata__", ())
        if not metadata or not callable(metadata[0]):
            raise TypeError(f"models/{name}.py: option '{arg.name}' needs an Annotated[type, checker] annotation")
        checks[arg.name] = metadata[0]
    return checks


def build(name: str, in_channels: int, num_classes: int, image_size: int, **kwargs) -> "nn.Module":
    return spec(name).build(in_channels, num_classes, image_size, **kwargs)


def head(name: str, model: "nn.Module") -> "nn.Module":
    """The declared classifier head of a built model."""
    return model.get_submodule(spec(name).path(spec(name).head))


def attribution_layer(name: str, model: "nn.Module") -> "nn.Module | None":
    layer = spec(name).path(spec(name).attribution_layer)
    return None if layer is None else model.get_submodule(layer)
