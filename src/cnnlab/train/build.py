"""Building the model a fit starts from: the architecture for the data, its starting weights
(ImageNet's, a local file's, or its own init), the frozen layers, SyncBatchNorm and the memory layout."""

from __future__ import annotations

import torch
from torch import nn

from cnnlab import CnnlabError, models
from cnnlab.engine.checkpoints import (adapt_pretrained, count_parameters, fetch_pretrained, is_pretrained_name,
                                       load_weights, pretrained_weights)
from cnnlab.engine.inference import memory_format_for
from cnnlab.runtime import check_memory


def build_model(name: str, options: dict, cfg: dict, info: dict, device: torch.device, ranks: int = 1
                ) -> tuple[nn.Module, dict]:
    """(the model on `device`, ready to train; the data description with the normalisation it expects)."""
    spec = models.spec(name)
    if info["image_size"] < spec.min_image_size:
        raise CnnlabError(f"params.yaml: data.image_size {info['image_size']} is too small for {name} (it needs "
                          f"at least {spec.min_image_size} pixels); raise data.image_size or train another model")
    shape = (info["channels"], len(info["classes"]), info["image_size"])
    with torch.device("meta"):  # the architecture without its memory: count before allocating
        parameters = count_parameters(spec.build(*shape, **options))
    # weights, gradients, two Adam moments and the best epoch's copy: five float32 copies
    check_memory(parameters * 4 * 5, f"{name} with {parameters:,} parameters", device)
    model = spec.build(*shape, **options)
    if is_pretrained_name(cfg["weights"]):
        info = start_from_imagenet(model, name, cfg, info)
    elif cfg["weights"]:
        load_weights(model, cfg["weights"])
    if cfg["sync_batchnorm"] and ranks > 1:
        if device.type != "cuda":
            raise CnnlabError("params.yaml: train.sync_batchnorm needs CUDA (PyTorch's SyncBatchNorm runs on "
                              "GPUs only); set it to false for processes on a CPU")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if cfg["freeze"]:
        freeze_all_but(model, spec.path(spec.head))
    model = model.to(device)
    return model.to(memory_format=memory_format_for(model, cfg["memory_format"])), info


def start_from_imagenet(model: nn.Module, name: str, cfg: dict, info: dict) -> dict:
    """torchvision's ImageNet weights loaded; the data normalised as they were trained (for gray
    data, the mean of the RGB values)."""
    kept = adapt_pretrained(model, fetch_pretrained(pretrained_weights(name, cfg["weights"])))
    if cfg["progress"]:
        print(f"{name}: ImageNet weights loaded; trained from scratch: {', '.join(kept) or 'nothing'}", flush=True)
    spec = models.spec(name)
    mean, std = list(spec.pretrained_mean), list(spec.pretrained_std)
    if info["channels"] != 3:
        mean, std = [sum(mean) / 3], [sum(std) / 3]
    return {**info, "mean": mean, "std": std}


def freeze_all_but(model: nn.Module, head: str) -> None:
    """`train.freeze`: only the declared head learns."""
    trained = set(map(id, model.get_submodule(head).parameters()))
    for parameter in model.parameters():
        parameter.requires_grad_(id(parameter) in trained)
