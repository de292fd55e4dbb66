"""Every figure cnnlab draws (matplotlib and seaborn, headless), as functions of plain data.

Analysis, evaluation and the report compute; this module only draws, so a figure's look is changed in
one place and no stage needs a display. Neither torch, seaborn nor matplotlib is imported at the top:
the report stage draws with matplotlib alone and should not pay for the others, and a stage that
keeps a figure whose data is unchanged (cnnlab.plumbing.outputs.StagedOutputs.figure_of) pays for none.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


@functools.cache
def pyplot():
    """matplotlib's pyplot, headless (stages have no display), imported by the first drawing."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


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


def mosaic(tiles: np.ndarray, scale_each: bool) -> np.ndarray:
    """Tiles [rows, columns, h, w] laid out as one image with a one-pixel gap (NaN) between them,
    each tile scaled to 0..1 on its own when `scale_each`. One imshow of the whole grid draws in a
    fraction of the time of one matplotlib axes per tile (a LeNet's maps: 160 axes per layer)."""
    rows, columns, h, w = tiles.shape
    tiles = tiles.astype(np.float32)
    if scale_each:
        low = tiles.min(axis=(2, 3), keepdims=True)
        span = tiles.max(axis=(2, 3), keepdims=True) - low
        tiles = (tiles - low) / np.where(span > 0, span, 1)
    grid = np.full((rows * (h + 1) - 1, columns * (w + 1) - 1), np.nan, dtype=np.float32)
    for r in range(rows):
        for c in range(columns):
            grid[r * (h + 1):r * (h + 1) + h, c * (w + 1):c * (w + 1) + w] = tiles[r, c]
    return grid


def _mosaic_axes(ax, grid: np.ndarray, tile: tuple[int, int], row_labels: list[str], column_labels: list[str],
                 **imshow):
    cmap = pyplot().get_cmap(imshow.pop("cmap")).with_extremes(bad="white")
    ax.imshow(grid, cmap=cmap, interpolation="nearest", **imshow)
    h, w = tile
    ax.set_yticks([r * (h + 1) + (h - 1) / 2 for r in range(len(row_labels))], row_labels, fontsize=8)
    ax.set_xticks([c * (w + 1) + (w - 1) / 2 for c in range(len(column_labels))], column_labels, fontsize=7)
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)


def feature_map_figure(title: str, activation: torch.Tensor, row_labels: list[str], max_channels: int):
    """One row per sample image; for conv outputs one column per channel (each map scaled to its own
    range), for vectors a heatmap."""
    rows = len(activation)
    if activation.dim() == 4:
        channels = min(activation.shape[1], max_channels)
        fig, ax = pyplot().subplots(figsize=(0.9 * channels + 0.6, 0.9 * rows + 0.5))
        grid = mosaic(activation[:, :channels].float().numpy(), scale_each=True)
        _mosaic_axes(ax, grid, activation.shape[2:], row_labels, [str(c) for c in range(channels)], cmap="viridis")
        ax.set_xlabel("channel", fontsize=8)
        shown = f"first {channels} of {activation.shape[1]} channels" if channels < activation.shape[1] \
            else f"{channels} channels"
        fig.suptitle(f"{title}: {shown}, {activation.shape[2]}x{activation.shape[3]}", fontsize=10)
    else:
        values = activation.flatten(1).float()
        fig, ax = pyplot().subplots(figsize=(8, 0.3 * rows + 1))
        ax.imshow(values.numpy(), aspect="auto", cmap="viridis", interpolation="nearest")
        ax.set_yticks(range(rows), row_labels)
        ax.set_xlabel("unit")
        fig.suptitle(f"{title}: {values.shape[1]} units", fontsize=10)
    fig.tight_layout()
    return fig


FILTERS_PER_ROW = 8


def filters_figure(title: str, weight: torch.Tensor, first_layer: bool, max_channels: int):
    """First conv layer: every filter for every input channel. Deeper layers: for each output
    filter, its kernel on the input channel it weights most (largest L2 norm): a real learned
    kernel rather than an average that cancels out. One kernel per filter is wrapped 8 to a row:
    a single row of 32 kernels is too small to read in `dvc plots show`'s page."""
    weight = weight.detach().float().cpu()
    outs = min(weight.shape[0], max_channels * 2)
    kernels = (weight[:outs] if first_layer else
               weight[list(range(outs)), weight[:outs].flatten(2).norm(dim=2).argmax(1)].unsqueeze(1)).numpy()
    limit = float(np.abs(kernels).max())
    h, w = kernels.shape[2:]
    if kernels.shape[1] == 1 and outs > FILTERS_PER_ROW:  # wrapped: filter = row label + column label
        rows = -(-outs // FILTERS_PER_ROW)
        tiles = np.full((rows * FILTERS_PER_ROW, h, w), np.nan, dtype=np.float32)
        tiles[:outs] = kernels[:, 0]
        tiles = tiles.reshape(rows, FILTERS_PER_ROW, h, w)
        row_labels = [str(r * FILTERS_PER_ROW) for r in range(rows)]
        column_labels, xlabel = [f"+{c}" for c in range(FILTERS_PER_ROW)], "filter (row + column)"
        if not first_layer:
            xlabel += ", each on its strongest input channel"
    else:  # one row per input channel, one column per filter
        tiles = kernels.transpose(1, 0, 2, 3)
        row_labels = [f"in {i}" for i in range(tiles.shape[0])] if first_layer else ["strongest input"]
        column_labels, xlabel = [str(c) for c in range(outs)], "filter"
    rows, columns = tiles.shape[:2]
    fig, ax = pyplot().subplots(figsize=(0.6 * columns + 0.9, 0.6 * rows + 0.7))
    grid = mosaic(tiles, scale_each=False)  # one colour scale: signs compare
    _mosaic_axes(ax, grid, (h, w), row_labels, column_labels, cmap="RdBu_r", vmin=-limit, vmax=limit)
    ax.set_xlabel(xlabel, fontsize=8)
    fig.suptitle(f"{title}: {weight.shape[0]} filters {weight.shape[2]}x{weight.shape[3]}\n"
                 f"over {weight.shape[1]} input channels (red +, blue -)", fontsize=10)
    fig.tight_layout()
    return fig


def image_grid(images: torch.Tensor, captions: list[str], columns: int, title: str, overlays=None):
    rows = math.ceil(len(images) / columns)
    fig, axes = pyplot().subplots(rows, columns, figsize=(1.3 * columns, 1.45 * rows + 0.4), squeeze=False)
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
    fig, axes = pyplot().subplots(2, columns, figsize=(1.3 * columns, 3.1), squeeze=False)
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


def attribution_figure(images: torch.Tensor, maps: dict[str, torch.Tensor], captions: list[str], title: str):
    """One row per method, one column per image: each map scaled to its own peak."""
    rows, columns = len(maps), len(images)
    fig, axes = pyplot().subplots(rows + 1, columns, figsize=(1.2 * columns + 1.2, 1.25 * (rows + 1) + 0.4), squeeze=False)
    for i in range(columns):
        _show(axes[0][i], images[i])
        axes[0][i].set_title(captions[i], fontsize=7)
    for r, (name, found) in enumerate(maps.items(), start=1):
        for i in range(columns):
            peak = float(found[i].max()) or 1.0
            axes[r][i].imshow(found[i].numpy() / peak, cmap="magma", vmin=0, vmax=1)
            axes[r][i].set_xticks([])
            axes[r][i].set_yticks([])
        axes[r][0].set_ylabel(name.replace("_", "\n"), fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def tsne_figure(points: np.ndarray, labels: np.ndarray, classes: list[str], title: str):
    fig, ax = pyplot().subplots(figsize=(6, 5.2))
    palette = pyplot().get_cmap("tab10" if len(classes) <= 10 else "tab20")
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
    fig, ax = pyplot().subplots(figsize=(1.0 + 0.55 * len(classes), 0.6 + 0.5 * len(classes)))
    sns.heatmap(matrix, annot=len(classes) <= 20, fmt="d", cmap="Blues", cbar=False, ax=ax,
                xticklabels=classes, yticklabels=classes, annot_kws={"fontsize": 8})
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title(title)
    return fig


def comparison_figure(plot: dict):
    """One line per model of a table an analysis plots in the report (report_plots: title, x, y, curves)."""
    fig, ax = pyplot().subplots(figsize=(5.5, 3.6))
    for i, (name, curve) in enumerate(plot["curves"].items()):
        ax.plot(curve["x"], curve["y"], marker="o", color=f"C{i}", label=name)
    ax.set_title(plot["title"], fontsize=9)
    ax.set_xlabel(plot["x"])
    ax.set_ylabel(plot["y"])
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def curves_figure(histories: dict):
    fig, axes = pyplot().subplots(1, 3, figsize=(14, 3.8))
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
