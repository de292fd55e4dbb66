"""Every layer's output for the sample images (forward hooks), and how much each still looks like the input."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab import figures

TITLE = "Feature maps"


def leaf_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, module) for name, module in model.named_modules() if not list(module.children())]


@torch.no_grad()
def capture_activations(model: nn.Module, x: torch.Tensor) -> list[tuple[str, nn.Module, torch.Tensor]]:
    """(name, module, output) of every leaf module, in the order they ran. The hooks are removed
    whatever happens; outputs are cloned, so a later in-place op cannot change what was recorded."""
    records: list[tuple[str, nn.Module, torch.Tensor]] = []
    handles = []
    for name, module in leaf_modules(model):
        def hook(mod, inputs, output, name=name):
            records.append((name, mod, output.detach().clone()))
        handles.append(module.register_forward_hook(hook))
    was_training = model.training
    try:
        model.eval()
        model(x)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return records


def image_likeness(images: torch.Tensor, activation: torch.Tensor) -> float | None:
    """Mean correlation between each input image and its layer output (mean |activation| over channels,
    resized to the input): near 1 while a layer's maps still look like the input, near 0 after."""
    if activation.dim() != 4:
        return None
    maps = F.interpolate(activation.float().abs().mean(1, keepdim=True), size=images.shape[-2:], mode="bilinear",
                         align_corners=False).flatten(1)
    pixels = images.float().mean(1, keepdim=True).flatten(1)
    maps, pixels = maps - maps.mean(1, keepdim=True), pixels - pixels.mean(1, keepdim=True)
    denominator = (maps.norm(dim=1) * pixels.norm(dim=1)).clamp_min(1e-12)
    return float(((maps * pixels).sum(1) / denominator).mean())


def run(s, findings, section) -> None:
    raw = s.sample_images
    layers, drawn = [], []
    for position, (layer, module, output) in enumerate(capture_activations(s.model, s.test.normalise(raw)), start=1):
        kind = type(module).__name__
        layers.append({"layer": layer, "type": kind, "shape": "x".join(map(str, output.shape[1:])),
                       "image_likeness": image_likeness(raw, output)})
        drawn.append(f"maps/{position:02d}_{layer}_{kind}.png")
        findings.figures[drawn[-1]] = figures.feature_map_figure(
            f"{s.name} layer {layer} ({kind})", output.cpu(), s.row_labels, s.options["max_channels"])
    findings.tables["layers"] = layers
    section["text"].append(describe(layers))
    section["tables"].append("layers")
    section["figures"].append(next((f for f in drawn if "Conv" in f), drawn[0]))
    section["links"] += drawn


def describe(layers: list[dict]) -> str:
    """How far the maps stay image-like (mean correlation with the input >= 0.5), in words."""
    spatial = [row for row in layers if row["image_likeness"] is not None]
    if not spatial:
        return ("It has no convolutions: every layer is a vector, so there are no spatial maps; its layer "
                "activations are drawn as heatmaps instead.")
    like = [row for row in spatial if row["image_likeness"] >= 0.5]
    last = spatial[-1]
    said = lambda row: f"{row['layer']} ({row['type']}, {row['shape']}, {row['image_likeness']:.2f})"  # noqa: E731
    if like and like[-1] is last:
        return (f"Its feature maps stay image-like (mean correlation with the input >= 0.5) through its last "
                f"spatial layer, {said(last)}: the classifier reads maps that still outline the input.")
    if like:
        return (f"Its feature maps stay image-like (mean correlation with the input >= 0.5) up to layer "
                f"{said(like[-1])}; by layer {last['layer']} ({last['type']}, {last['shape']}) the correlation is "
                f"{last['image_likeness']:.2f}, the maps now code for parts rather than the picture.")
    return f"Already its first layer's maps correlate weakly with the input ({spatial[0]['image_likeness']:.2f})."
