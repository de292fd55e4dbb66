"""Checkpoints: everything needed to rebuild a trained model and its input normalisation, in plain
types and tensors only, so that they load with torch.load(weights_only=True) and cannot run code.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from cnnlab import CnnlabError
from cnnlab.plumbing.timing import timed
from cnnlab import models
from cnnlab.engine.inference import memory_format_for


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def checkpoint(name: str, model: nn.Module, options: dict, info: dict, precision: str = "fp32",
               tta: str = "none") -> dict:
    return {
        "model": name, "options": options,
        "in_channels": info["channels"], "num_classes": len(info["classes"]), "image_size": info["image_size"],
        "classes": info["classes"], "mean": info["mean"], "std": info["std"],
        "precision": precision,  # inference runs under the autocast the model was trained with
        "tta": tta,              # and predicts from the views it was validated with (train.tta)
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }


def tta_of(ckpt: dict) -> str:
    """The test-time views a checkpoint predicts with (`flip_tta: true` in checkpoints before `tta`)."""
    return ckpt.get("tta") or ("flip" if ckpt.get("flip_tta") else "none")


def _read(path: Path, missing: str, what: str) -> object:
    if not path.is_file():
        raise CnnlabError(f"{path}: {missing}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt or foreign file: unpickling arbitrary objects is refused, not attempted
        raise CnnlabError(f"{path}: not a {what} ({type(err).__name__})") from None


def _require_finite(path: Path, state: dict) -> None:
    bad = next((k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
    if bad is not None:
        raise CnnlabError(f"{path}: tensor {bad} holds NaN or inf values (a diverged training?); retrain it")


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Start from a local state dict (a plain one, or a cnnlab checkpoint's). Nothing is fetched from
    a hub; the file is read with weights_only=True, so it cannot run code."""
    path = Path(path)
    blob = _read(path, "weights file not found (set the model's `weights:` to a local state dict)", "state dict")
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
    _require_finite(path, state)
    model.load_state_dict(state)


def is_pretrained_name(value: str | None) -> bool:
    """`weights: imagenet`, or a torchvision enum name such as IMAGENET1K_V1 (a path otherwise)."""
    return bool(value) and (value == "imagenet" or value.split(".")[-1].isupper())


def pretrained_weights(model_name: str, value: str):
    """The torchvision weights enum member that `weights:` names for this model (its spec's
    `pretrained`)."""
    import torchvision
    declared = models.spec(model_name).pretrained
    if declared is None:
        raise CnnlabError(f"params.yaml: {model_name}.weights {value!r}: {model_name} declares no pretrained "
                          f"weights (models/{model_name}.py: spec.pretrained); use a local state dict")
    enum = getattr(torchvision.models, declared)
    name = "DEFAULT" if value == "imagenet" else value.split(".")[-1]
    try:
        return enum.DEFAULT if name == "DEFAULT" else enum[name]
    except KeyError:
        raise CnnlabError(f"params.yaml: {model_name}.weights must be imagenet, a local file or one of "
                          f"{', '.join(m.name for m in enum)}; got {value!r}") from None


def fetch_pretrained(weights) -> dict:
    """The weights' state dict from the torch hub cache ($TORCH_HOME/hub/checkpoints), fetched there
    first when the network allows; offline, one line naming the file to place and where."""
    import torch.hub
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    file = cache / Path(weights.url).name
    if not file.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(weights.url, str(file), progress=False)
        except Exception as err:  # no network, proxy, refused: all mean "place the file by hand"
            raise CnnlabError(f"cannot fetch {weights} ({type(err).__name__}); without network, place "
                              f"{file.name} (from {weights.url}) in {cache} (set TORCH_HOME to move it)") from None
    return _read(file, "missing", "state dict")


def adapt_pretrained(model: nn.Module, state: dict) -> list[str]:
    """Load ImageNet weights into a model of the zoo; return the names of the tensors kept as
    initialised. The first convolution of 1-channel data gets the sum of the RGB kernels (a gray
    image replicated to three channels gives the same response); a layer whose shape differs
    anyway (the head of another number of classes, ResNet's 3x3 CIFAR stem) keeps its own init."""
    own = model.state_dict()
    loaded, kept = {}, []
    for key, value in state.items():
        if key not in own:
            continue
        if value.dim() == 4 and value.shape[1] == 3 and own[key].shape[1] == 1 and value.shape[2:] == own[key].shape[2:]:
            value = value.sum(dim=1, keepdim=True)
        if value.shape == own[key].shape:
            loaded[key] = value
        else:
            kept.append(key)
    kept += [key for key in own if key not in state]
    _require_finite(Path("pretrained"), loaded)
    model.load_state_dict(loaded, strict=False)
    return kept


def load_checkpoint(path: str | Path, device: torch.device, expected: str | None = None) -> tuple[nn.Module, dict]:
    """The trained model and its checkpoint record; with `expected`, the checkpoint must be that
    model's (a lenet.pt copied over mlp.pt must not score as the MLP)."""
    path = Path(path)
    with timed("load"):
        ckpt = _read(path, "missing; run the train stage first (dvc repro)", "cnnlab checkpoint")
    if not isinstance(ckpt, dict) or ckpt.get("model") not in models.names():
        raise CnnlabError(f"{path}: not a cnnlab checkpoint (unknown model "
                          f"{ckpt.get('model') if isinstance(ckpt, dict) else None!r})")
    if expected is not None and ckpt["model"] != expected:
        raise CnnlabError(f"{path}: holds a trained {ckpt['model']}, not {expected} (a copied or renamed file?); "
                          f"retrain it with dvc repro -f -s train@{expected}")
    _require_finite(path, ckpt["state_dict"])
    model = models.build(ckpt["model"], ckpt["in_channels"], ckpt["num_classes"], ckpt["image_size"], **ckpt["options"])
    model.load_state_dict(ckpt["state_dict"])
    # inference in the memory layout the model was trained and validated in
    return model.to(device, memory_format=memory_format_for(model)).eval(), ckpt
