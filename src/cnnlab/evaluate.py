"""Test-set evaluation: predictions in large batches, metrics from scikit-learn, a confusion heatmap."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # stages run headless
import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

from cnnlab.batches import DeviceSplit
from cnnlab.models import load_checkpoint
from cnnlab.prepare import load_prepared
from cnnlab.runtime import device_name, pick_device


@torch.inference_mode()
def predict(model: torch.nn.Module, data: DeviceSplit, batch_size: int) -> tuple[np.ndarray, float]:
    """(predicted class per sample, mean cross-entropy)."""
    predictions, loss_sum = [], torch.zeros((), device=data.labels.device)
    for x, y in data.batches(batch_size):
        logits = model(x)
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        predictions.append(logits.argmax(1))
    return torch.cat(predictions).cpu().numpy(), loss_sum.item() / len(data)


def scores(actual: np.ndarray, predicted: np.ndarray, classes: list[str]) -> tuple[dict, list[dict]]:
    """(overall metrics, one row per class) from scikit-learn."""
    labels = list(range(len(classes)))
    macro = precision_recall_fscore_support(actual, predicted, labels=labels, average="macro", zero_division=0)
    per_class = precision_recall_fscore_support(actual, predicted, labels=labels, zero_division=0)
    overall = {
        "accuracy": float(accuracy_score(actual, predicted)),
        "macro_precision": float(macro[0]),
        "macro_recall": float(macro[1]),
        "macro_f1": float(macro[2]),
    }
    rows = [{"class": name, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(classes, *per_class)]
    return overall, rows


def confusion_figure(matrix: np.ndarray, classes: list[str], title: str):
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * len(classes), 0.6 + 0.5 * len(classes)))
    sns.heatmap(matrix, annot=len(classes) <= 20, fmt="d", cmap="Blues", cbar=False, ax=ax,
                xticklabels=classes, yticklabels=classes, annot_kws={"fontsize": 8})
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title(title)
    return fig


def evaluate_model(name: str, checkpoint_path: Path, prepared_dir: Path, batch_size: int) -> dict:
    """Everything the evaluate stage writes, as plain data plus one figure."""
    device = pick_device("auto")
    model, ckpt = load_checkpoint(checkpoint_path, device)
    data = load_prepared(prepared_dir, ("test",))
    test = DeviceSplit(*data["test"], ckpt["mean"], ckpt["std"], device)
    predicted, loss = predict(model, test, batch_size)
    actual = data["test"][1].numpy()
    classes = ckpt["classes"]
    overall, per_class = scores(actual, predicted, classes)
    matrix = confusion_matrix(actual, predicted, labels=list(range(len(classes))))
    metrics = {**overall, "loss": loss, "test_images": int(len(actual)),
               "device": device.type, "device_name": device_name(device)}
    return {
        "metrics": metrics,
        "per_class": per_class,
        "pairs": [{"actual": classes[a], "predicted": classes[p]} for a, p in zip(actual, predicted)],
        "figure": confusion_figure(matrix, classes, f"{name}: test accuracy {overall['accuracy']:.2%}"),
    }
