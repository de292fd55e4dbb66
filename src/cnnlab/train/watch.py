"""Watching a network learn: at step 0 (untrained) and after every epoch, pictures of its inside (the
first layer's filters, the feature maps of one fixed validation image, an attribution method's maps of
one fixed validation image per class) and two curves (the method's deletion AUC on a fixed subset, each
image's probability relative to its start, and the silhouette of a fixed subset's embedding). Images and subsets are fixed, so two runs' steps compare.

Drawn with numpy alone, as uint8 RGB arrays: matplotlib would cost more than the fit of a small model.
Nothing here draws random numbers or changes the model, so a watched fit trains exactly as an unwatched one.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from cnnlab import CnnlabError, explain, models
from cnnlab.engine.batches import DeviceSplit
from cnnlab.engine.inference import embeddings
from cnnlab.prepare import one_per_class

TILE = 48            # pixels a tile is enlarged to (nearest neighbour), at least
FILTERS_SHOWN = 16
DELETION_IMAGES = 32
SILHOUETTE_IMAGES = 256


class Watch:
    def __init__(self, name: str, val: DeviceSplit, classes: int, method: str, seed: int):
        spec = models.spec(name)
        if method in ("gradcam", "guided_gradcam") and spec.attribution_layer is None:
            raise CnnlabError(f"params.yaml: train.watch_method {method} needs a spatial layer and models/{name}.py "
                              f"declares none; use integrated_gradients, input_gradients or occlusion for {name}")
        self.head, self.method = spec.path(spec.head), explain.methods(spec.path(spec.attribution_layer), seed)[method]
        order = torch.randperm(len(val), generator=torch.Generator().manual_seed(seed))
        self.per_class = one_per_class(val.labels.cpu(), 1, classes, seed)
        self.deletion = order[:DELETION_IMAGES].sort().values
        self.silhouette = order[:SILHOUETTE_IMAGES].sort().values
        self.val = val

    def __call__(self, model: nn.Module, epoch: int) -> dict:
        """What the model looks like now: {"epoch", "images": {kind: uint8 [H, W, 3]}, and the curves}."""
        was_training = model.training
        model.eval()
        try:
            images = {"filters": filters_image(first_layer(model))}
            maps = first_maps(model, self.normalised(self.per_class[:1]))
            if maps is not None:
                images["feature_maps"] = maps_image(maps)
            raw = self.val.images.index_select(0, self.per_class.to(self.val.images.device))
            x = self.normalised(self.per_class)
            images["attributions"] = attribution_image(raw, self.attribute(model, x))
            numbers = {"deletion_auc": self.deletion_auc(model), "silhouette": self.silhouette_score(model)}
        finally:
            model.train(was_training)
        return {"epoch": epoch, "images": {k: torch.from_numpy(v) for k, v in images.items()}, **numbers}

    def normalised(self, index: torch.Tensor) -> torch.Tensor:
        return self.val.normalise(self.val.images.index_select(0, index.to(self.val.images.device))).float()

    def attribute(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = model(x).argmax(1)
        return self.method(model, x, target).detach().float().cpu()

    def deletion_auc(self, model: nn.Module) -> float:
        x = self.normalised(self.deletion)
        with torch.no_grad():
            target = model(x).argmax(1)
        fractions, deletion, _ = explain.probability_curves(model, x, target, self.attribute(model, x).to(x.device))
        # each image's curve relative to its own starting probability: an untrained net is sure of nothing
        return float(explain.area(fractions, deletion / np.maximum(deletion[:, :1], 1e-12)).mean())

    def silhouette_score(self, model: nn.Module) -> float:
        features = embeddings(model, model.get_submodule(self.head), self.val, self.silhouette, 256)
        return silhouette(features, self.val.labels.cpu()[self.silhouette])


def silhouette(features: torch.Tensor, labels: torch.Tensor) -> float:
    """The mean silhouette coefficient (Euclidean), as scikit-learn's silhouette_score computes it."""
    distance = torch.cdist(features.double(), features.double())
    classes, members = labels.unique(return_inverse=True)
    onehot = torch.nn.functional.one_hot(members, len(classes)).double()
    counts = onehot.sum(0)
    mean_to = distance @ onehot / counts                              # [n, classes]: mean distance to each class
    own = counts[members]
    a = (mean_to.gather(1, members[:, None])[:, 0] * own) / (own - 1).clamp_min(1)  # without itself
    b = mean_to.masked_fill(onehot.bool(), float("inf")).min(1).values
    s = torch.where(own > 1, (b - a) / torch.maximum(a, b).clamp_min(1e-12), torch.zeros_like(a))
    return float(s.mean())


def first_layer(model: nn.Module) -> nn.Module:
    return next(m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))


def first_maps(model: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """The first convolution's output channels for one image, or None for a network without one."""
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None:
        return None
    captured = []
    handle = conv.register_forward_hook(lambda module, inputs, output: captured.append(output.detach()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return captured[0][0].float().cpu()


def filters_image(layer: nn.Module) -> np.ndarray:
    """The first layer's filters, red for positive and blue for negative weights: a conv's kernels (in colour
    for RGB input), a linear layer's units as images when its inputs are the pixels."""
    weight = layer.weight.detach().float().cpu()[:FILTERS_SHOWN]
    if weight.dim() == 2:  # a linear layer on flattened pixels: each unit is a template image
        side = int(round((weight.shape[1]) ** 0.5))
        channels = 1 if side * side == weight.shape[1] else 3
        side = int(round((weight.shape[1] / channels) ** 0.5))
        weight = weight.view(len(weight), channels, side, side)
    if weight.shape[1] == 3:
        limit = weight.abs().amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12)
        tiles = (0.5 + 0.5 * weight / limit).permute(0, 2, 3, 1).numpy()
    else:
        tiles = diverging(weight[:, 0].numpy() / max(float(weight[:, 0].abs().max()), 1e-12))
    return grid(tiles, columns=8)


def maps_image(maps: torch.Tensor) -> np.ndarray:
    maps = maps[:FILTERS_SHOWN]
    low, high = maps.amin(dim=(1, 2), keepdim=True), maps.amax(dim=(1, 2), keepdim=True)
    scaled = ((maps - low) / (high - low).clamp_min(1e-12)).numpy()
    return grid(np.repeat(scaled[..., None], 3, axis=-1), columns=8)


def attribution_image(raw: torch.Tensor, maps: torch.Tensor) -> np.ndarray:
    """Each image in gray with its map as heat on top (hot: black, red, yellow, white)."""
    gray = raw.float().mean(1).cpu().numpy() / 255
    heat = (maps / maps.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1)).numpy()
    hot = np.stack([np.clip(3 * heat, 0, 1), np.clip(3 * heat - 1, 0, 1), np.clip(3 * heat - 2, 0, 1)], -1)
    alpha = np.clip(heat, 0, 1)[..., None]
    return grid((1 - alpha) * gray[..., None] + alpha * hot, columns=len(raw))


def diverging(values: np.ndarray) -> np.ndarray:
    """-1..1 to RGB: blue, white, red."""
    positive, negative = np.clip(values, 0, 1), np.clip(-values, 0, 1)
    return np.stack([1 - negative, 1 - positive - negative, 1 - positive], -1)


def grid(tiles: np.ndarray, columns: int) -> np.ndarray:
    """Tiles [n, h, w, 3] in 0..1, enlarged to at least TILE pixels, `columns` to a row, one white pixel apart."""
    n, h, w, _ = tiles.shape
    scale = max(1, -(-TILE // max(h, w)))
    tiles = tiles.repeat(scale, axis=1).repeat(scale, axis=2)
    h, w, rows = h * scale, w * scale, -(-n // columns)
    columns = min(columns, n)
    out = np.ones((rows * (h + 1) - 1, columns * (w + 1) - 1, 3), dtype=np.float32)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        out[r * (h + 1):r * (h + 1) + h, c * (w + 1):c * (w + 1) + w] = tile
    return (np.nan_to_num(out, nan=0.5).clip(0, 1) * 255).round().astype(np.uint8)  # a diverged net: grey
