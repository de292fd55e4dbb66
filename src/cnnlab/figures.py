"""Every figure cnnlab draws (matplotlib and seaborn, headless), as functions of plain data.

Analysis, evaluation and the report compute; this module only draws, so a figure's look is changed in
one place and no stage needs a display. Neither torch nor seaborn is imported at the top: the report
stage draws with matplotlib alone and should not pay for them.
"""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")  # stages run headless
import matplotlib.pyplot as plt
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

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
        kernels, labels = weight[list(range(outs)), strongest].unsqueeze(1), ["strongest input"]
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


def gradcam_figure(images: torch.Tensor, cams: torch.Tensor, guided: torch.Tensor, captions: list[str],
                   title: str):
    """One column per image: the image under its Grad-CAM heat (top), Guided Grad-CAM (bottom)."""
    columns = len(images)
    fig, axes = plt.subplots(2, columns, figsize=(1.3 * columns, 3.1), squeeze=False)
    for i in range(columns):
        _show(axes[0][i], images[i])
        axes[0][i].imshow(cams[i].numpy(), cmap="jet", alpha=0.45, vmin=0, vmax=1)
        axes[0][i].set_title(captions[i], fontsize=7)
        axes[1][i].imshow(guided[i].numpy(), cmap="magma", vmin=0, vmax=1)
        axes[1][i].set_xticks([])
        axes[1][i].set_yticks([])
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


def samples_figure(images: torch.Tensor, labels: torch.Tensor, classes: list[str], index: torch.Tensor,
                   per_class: int):
    """A grid of example training images (those at `index`, grouped by class), one row per class."""
    captions = [classes[int(labels[i])] for i in index]
    return image_grid(images[index], captions, per_class, "sample training images, one row per class")


def confusion_figure(matrix: np.ndarray, classes: list[str], title: str):
    import seaborn as sns
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * len(classes), 0.6 + 0.5 * len(classes)))
    sns.heatmap(matrix, annot=len(classes) <= 20, fmt="d", cmap="Blues", cbar=False, ax=ax,
                xticklabels=classes, yticklabels=classes, annot_kws={"fontsize": 8})
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title(title)
    return fig


def noise_figure(analysis: dict):
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for i, (name, found) in enumerate(analysis.items()):
        curve = found["noise"]
        ax.plot(curve["noise"], curve["accuracy"], marker="o", color=f"C{i}", label=name)
    ax.set_xlabel("fraction of pixels replaced by salt-and-pepper noise")
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def curves_figure(histories: dict):
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for i, (name, history) in enumerate(histories.items()):
        color = f"C{i}"  # one colour per model across all panels
        axes[0].plot(history["epoch"], history["train_loss"], color=color, label=f"{name} train")
        axes[0].plot(history["epoch"], history["val_loss"], "--", color=color, label=f"{name} val")
        axes[1].plot(history["epoch"], history["val_accuracy"], marker="o", ms=3, color=color, label=name)
        axes[2].plot(history["epoch"], history["train_accuracy"], marker="o", ms=3, color=color, label=name)
    for ax, title in zip(axes, ("loss (solid: train, dashed: val)", "validation accuracy", "training accuracy")):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_yscale("log")
    fig.tight_layout()
    return fig
