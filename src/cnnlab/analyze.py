"""Looking inside a trained model: feature maps, learned filters, t-SNE of embeddings, Grad-CAM,
the most confident mistakes, and accuracy under salt-and-pepper noise.

Everything here works on any model of the registry: layers are found by type (leaf modules, the last
Conv2d, the last Linear), never by name, so a new architecture is analysed without changes.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # stages run headless
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from sklearn.manifold import TSNE
from sklearn.metrics import silhouette_score
from torch import nn

from cnnlab.batches import DeviceSplit
from cnnlab.models import load_checkpoint
from cnnlab.prepare import load_prepared
from cnnlab.runtime import pick_device


# --- probes -------------------------------------------------------------------------------------

def leaf_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, module) for name, module in model.named_modules() if not list(module.children())]


@torch.no_grad()
def capture_activations(model: nn.Module, x: torch.Tensor) -> list[tuple[str, nn.Module, torch.Tensor]]:
    """(name, module, output) of every leaf module, in the order they ran, from forward hooks.

    The hooks are removed before returning, whatever happens, so the model is left as it was.
    Outputs are cloned: a later in-place op must not change what was recorded.
    """
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


def last_of(model: nn.Module, kind: type) -> nn.Module | None:
    found = [m for m in model.modules() if isinstance(m, kind)]
    return found[-1] if found else None


@torch.inference_mode()
def penultimate_features(model: nn.Module, data: DeviceSplit, index: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The input of the classifier's last Linear layer (the embedding the classes are read from)."""
    head = last_of(model, nn.Linear)
    captured: list[torch.Tensor] = []
    handle = head.register_forward_pre_hook(lambda mod, inputs: captured.append(inputs[0].flatten(1).float()))
    try:
        model.eval()
        for start in range(0, len(index), batch_size):
            part = index[start:start + batch_size].to(data.images.device)
            model(data.normalise(data.images.index_select(0, part)))
    finally:
        handle.remove()
    return torch.cat(captured).cpu()


def grad_cam(model: nn.Module, x: torch.Tensor, target: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Grad-CAM maps on the last Conv2d (upsampled to the input, each scaled to 0..1) and the class
    each map explains (the predicted one unless `target` is given)."""
    conv = last_of(model, nn.Conv2d)
    if conv is None:
        raise ValueError("Grad-CAM needs a convolution layer")
    saved: dict[str, torch.Tensor] = {}

    def keep(mod, inputs, output):
        output.retain_grad()
        saved["act"] = output

    handle = conv.register_forward_hook(keep)
    try:
        model.eval()
        with torch.enable_grad():
            logits = model(x.detach().requires_grad_(True))
            target = logits.argmax(1) if target is None else target
            logits.gather(1, target.view(-1, 1)).sum().backward()
    finally:
        handle.remove()
        model.zero_grad(set_to_none=True)
    act, grad = saved["act"].detach(), saved["act"].grad.detach()
    weights = grad.mean(dim=(2, 3), keepdim=True)            # importance of each channel for the class
    cam = F.relu((weights * act).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).max(1).values.clamp_min(1e-12).view(-1, 1, 1)
    return cam / peak, target


def salt_and_pepper(images: torch.Tensor, amount: float, generator: torch.Generator) -> torch.Tensor:
    """uint8 images with a fraction `amount` of pixels replaced, half by 0 (pepper), half by 255 (salt)."""
    if amount <= 0:
        return images.clone()
    draw = torch.rand(images.shape, generator=generator).to(images.device)
    noisy = images.clone()
    noisy[draw < amount / 2] = 0
    noisy[(draw >= amount / 2) & (draw < amount)] = 255
    return noisy


@torch.inference_mode()
def accuracy_under_noise(model: nn.Module, test: DeviceSplit, levels: list[float], batch_size: int,
                         seed: int) -> dict[str, float]:
    """Test accuracy with salt-and-pepper noise at each level (the same noise for every model)."""
    model.eval()
    result = {}
    for level in levels:
        noisy = salt_and_pepper(test.images.cpu(), level, torch.Generator().manual_seed(seed)).to(test.images.device)
        correct = 0
        for start in range(0, len(test), batch_size):
            logits = model(test.normalise(noisy[start:start + batch_size]))
            correct += int((logits.argmax(1) == test.labels[start:start + batch_size]).sum())
        result[f"{level:g}"] = correct / len(test)
    return result


@torch.inference_mode()
def probabilities(model: nn.Module, data: DeviceSplit, batch_size: int) -> torch.Tensor:
    model.eval()
    return torch.cat([F.softmax(model(x).float(), 1) for x, _ in data.batches(batch_size)]).cpu()


def most_confused(probs: torch.Tensor, labels: torch.Tensor, count: int) -> list[dict]:
    """The misclassified test images the model was most sure about."""
    confidence, predicted = probs.max(1)
    wrong = torch.nonzero(predicted != labels).flatten()
    order = wrong[confidence[wrong].argsort(descending=True)][:count]
    return [{"index": int(i), "actual": int(labels[i]), "predicted": int(predicted[i]),
             "confidence": float(confidence[i])} for i in order]


CLASSES_DRAWN = 10  # per-image figures show the first 10 classes (CIFAR-100 would need 100 rows)


def one_per_class(labels: torch.Tensor, per_class: int, num_classes: int, seed: int) -> torch.Tensor:
    """`per_class` test images of each of the first CLASSES_DRAWN classes (seeded), grouped by class."""
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for cls in range(min(num_classes, CLASSES_DRAWN)):
        members = torch.nonzero(labels == cls).flatten()
        chosen.append(members[torch.randperm(len(members), generator=generator)[:per_class]])
    return torch.cat(chosen)


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


def tsne_2d(features: np.ndarray, perplexity: float, seed: int) -> np.ndarray:
    perplexity = min(perplexity, (len(features) - 1) / 3)  # scikit-learn requires perplexity < n
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(features)


# --- figures -----------------------------------------------------------------------------------

def _show(ax, image: torch.Tensor, cmap="gray"):
    image = image.float()
    if image.dim() == 3 and image.shape[0] == 3:
        image = image.permute(1, 2, 0)
        image = (image - image.min()) / (image.max() - image.min()).clamp_min(1e-12)
        ax.imshow(image.numpy())
    else:
        ax.imshow((image[0] if image.dim() == 3 else image).numpy(), cmap=cmap)
    ax.set_xticks([])
    ax.set_yticks([])


def feature_map_figure(title: str, activation: torch.Tensor, row_labels: list[str], max_channels: int):
    """One row per sample image; for conv outputs one column per channel, for vectors a heatmap."""
    rows = len(activation)
    if activation.dim() == 4:
        channels = min(activation.shape[1], max_channels)
        fig, axes = plt.subplots(rows, channels, figsize=(0.9 * channels + 0.6, 0.9 * rows + 0.5), squeeze=False)
        for r in range(rows):
            for c in range(channels):
                _show(axes[r][c], activation[r, c], cmap="viridis")
            axes[r][0].set_ylabel(row_labels[r], rotation=0, ha="right", va="center")
        shown = f"first {channels} of {activation.shape[1]} channels" if channels < activation.shape[1] \
            else f"{channels} channels"
        fig.suptitle(f"{title}: {shown}, {activation.shape[2]}x{activation.shape[3]}", fontsize=10)
    else:
        values = activation.flatten(1).float()
        fig, ax = plt.subplots(figsize=(8, 0.3 * rows + 1))
        ax.imshow(values.numpy(), aspect="auto", cmap="viridis", interpolation="nearest")
        ax.set_yticks(range(rows), row_labels)
        ax.set_xlabel("unit")
        fig.suptitle(f"{title}: {values.shape[1]} units", fontsize=10)
    fig.tight_layout()
    return fig


def filters_figure(title: str, weight: torch.Tensor, first_layer: bool, max_channels: int):
    """First conv layer: every filter for every input channel. Deeper layers: for each output
    filter, its kernel on the input channel it weights most (largest L2 norm): a real learned
    kernel rather than an average that cancels out."""
    weight = weight.detach().float().cpu()
    outs = min(weight.shape[0], max_channels * 2)
    if first_layer:
        kernels, labels = weight[:outs], [f"in {i}" for i in range(weight.shape[1])]
    else:
        strongest = weight[:outs].flatten(2).norm(dim=2).argmax(1)
        kernels, labels = weight[torch.arange(outs), strongest].unsqueeze(1), ["strongest input"]
    rows = kernels.shape[1]
    fig, axes = plt.subplots(rows, outs, figsize=(0.6 * outs + 0.8, 0.7 * rows + 0.6), squeeze=False)
    limit = float(kernels.abs().max())
    for r in range(rows):
        for c in range(outs):
            axes[r][c].imshow(kernels[c, r].numpy(), cmap="RdBu_r", vmin=-limit, vmax=limit)
            axes[r][c].set_xticks([])
            axes[r][c].set_yticks([])
        axes[r][0].set_ylabel(labels[r], rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(f"{title}: {weight.shape[0]} filters {weight.shape[2]}x{weight.shape[3]} "
                 f"over {weight.shape[1]} input channels (red +, blue -)", fontsize=10)
    fig.tight_layout()
    return fig


def image_grid(images: torch.Tensor, captions: list[str], columns: int, title: str, overlays=None):
    rows = math.ceil(len(images) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(1.3 * columns, 1.45 * rows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, (image, caption) in enumerate(zip(images, captions)):
        ax = axes.flat[i]
        _show(ax, image)
        if overlays is not None:
            ax.imshow(overlays[i].numpy(), cmap="jet", alpha=0.45, vmin=0, vmax=1)
        ax.set_title(caption, fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def tsne_figure(points: np.ndarray, labels: np.ndarray, classes: list[str], title: str):
    fig, ax = plt.subplots(figsize=(6, 5.2))
    palette = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    for cls, name in enumerate(classes):
        mask = labels == cls
        ax.scatter(points[mask, 0], points[mask, 1], s=4, color=palette(cls % palette.N), label=name)
    ax.legend(markerscale=3, fontsize=7, loc="best", ncol=2)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


# --- the stage's job ---------------------------------------------------------------------------

def analyze_model(name: str, checkpoint_path: Path, prepared_dir: Path, options: dict) -> dict:
    """Every figure, table and number the analyze stage writes for one model."""
    device = pick_device("auto")
    model, ckpt = load_checkpoint(checkpoint_path, device)
    classes, seed = ckpt["classes"], options["seed"]
    data = load_prepared(prepared_dir, ("test",))
    test = DeviceSplit(*data["test"], ckpt["mean"], ckpt["std"], device)
    labels = data["test"][1]
    figures: dict[str, object] = {}

    samples = one_per_class(labels, options["samples_per_class"], len(classes), seed)
    raw = test.images.index_select(0, samples.to(device))
    x = test.normalise(raw)
    row_labels = [classes[int(labels[i])] for i in samples]

    # feature maps of every layer
    layers = []
    for position, (layer, module, output) in enumerate(capture_activations(model, x), start=1):
        kind = type(module).__name__
        likeness = image_likeness(raw, output)
        layers.append({"layer": layer, "type": kind, "shape": list(output.shape[1:]), "image_likeness": likeness})
        figures[f"maps/{position:02d}_{layer}_{kind}.png"] = feature_map_figure(
            f"{name} layer {layer} ({kind})", output.cpu(), row_labels, options["max_channels"])

    # learned filters
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    for i, (layer, conv) in enumerate(convs):
        figures[f"filters/{layer}.png"] = filters_figure(f"{name} conv {layer}", conv.weight, i == 0,
                                                         options["max_channels"])

    # t-SNE and silhouettes
    generator = torch.Generator().manual_seed(seed)
    subsample = torch.randperm(len(labels), generator=generator)[:options["tsne_samples"]].sort().values
    features = penultimate_features(model, test, subsample, 1000).numpy()
    pixels = test.normalise(test.images.index_select(0, subsample.to(device))).flatten(1).cpu().numpy()
    sub_labels = labels[subsample].numpy()
    silhouette = float(silhouette_score(features, sub_labels))
    silhouette_pixels = float(silhouette_score(pixels, sub_labels))
    points = tsne_2d(features, options["tsne_perplexity"], seed)
    figures["tsne.png"] = tsne_figure(points, sub_labels, classes,
                                      f"{name}: t-SNE of {features.shape[1]}-d penultimate features, "
                                      f"{len(sub_labels)} test images\nsilhouette {silhouette:.3f} "
                                      f"(raw pixels {silhouette_pixels:.3f})")
    tsne_rows = [{"x": float(p[0]), "y": float(p[1]), "label": classes[int(c)], "index": int(i)}
                 for p, c, i in zip(points, sub_labels, subsample)]

    # Grad-CAM
    gradcam_layer = None  # a network without convolutions has no Grad-CAM
    if last_of(model, nn.Conv2d) is not None:
        cam, predicted = grad_cam(model, x)
        captions = [f"true {row_labels[i]}, pred {classes[int(predicted[i])]}" for i in range(len(samples))]
        figures["gradcam.png"] = image_grid(raw.cpu(), captions, min(len(samples), 10),
                                            f"{name}: Grad-CAM on the last convolution (for the predicted class)",
                                            overlays=cam.cpu())
        gradcam_layer = convs[-1][0]

    # most confident mistakes
    probs = probabilities(model, test, options["batch_size"])
    mistakes = most_confused(probs, labels, options["top_confused"])
    if mistakes:
        images = data["test"][0][[m["index"] for m in mistakes]]
        captions = [f"{classes[m['actual']]} as {classes[m['predicted']]} ({m['confidence']:.0%})" for m in mistakes]
        figures["confused.png"] = image_grid(images, captions, min(len(mistakes), 8),
                                             f"{name}: most confident mistakes (true as predicted)")

    # robustness to salt-and-pepper noise
    noise = accuracy_under_noise(model, test, options["noise_levels"], options["batch_size"], seed)

    metrics = {
        "silhouette": silhouette,
        "silhouette_pixels": silhouette_pixels,
        "noise_accuracy": noise,
        "tsne_samples": int(len(sub_labels)),
        "feature_dim": int(features.shape[1]),
        "gradcam_layer": gradcam_layer,
    }
    return {
        "metrics": metrics, "figures": figures, "tsne": tsne_rows,
        "noise": [{"noise": float(k), "accuracy": v} for k, v in noise.items()],
        "layers": [{**row, "shape": "x".join(map(str, row["shape"]))} for row in layers],
        "mistakes": [{**m, "actual": classes[m["actual"]], "predicted": classes[m["predicted"]]} for m in mistakes],
    }


def samples_figure(images: torch.Tensor, labels: torch.Tensor, classes: list[str], per_class: int, seed: int):
    """A grid of example training images, one row per class."""
    index = one_per_class(labels, per_class, len(classes), seed)
    captions = [classes[int(labels[i])] for i in index]
    return image_grid(images[index], captions, per_class, "sample training images, one row per class")
