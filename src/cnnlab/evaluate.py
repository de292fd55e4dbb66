"""Test-set evaluation: predictions in large batches, metrics from scikit-learn, a confusion heatmap."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

from cnnlab.batches import DeviceBudget, DeviceSplit
from cnnlab.checkpoints import load_checkpoint
from cnnlab.figures import confusion_figure
from cnnlab.inference import autocast_dtype, layout, score
from cnnlab.outputs import Result
from cnnlab.prepare import load_prepared
from cnnlab.runtime import device_name, pick_device


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


def evaluate_model(name: str, checkpoint_path: Path, prepared_dir: Path, batch_size: int,
                   max_device_bytes: int | None = None) -> Result:
    """Everything the evaluate stage writes, by output role."""
    device = pick_device("auto")
    model, ckpt = load_checkpoint(checkpoint_path, device, expected=name)
    data = load_prepared(prepared_dir, ("test",))
    test = DeviceSplit(*data["test"], ckpt["mean"], ckpt["std"], device, layout(model),
                       budget=DeviceBudget(device, max_device_bytes))
    result = score(model, test, batch_size, autocast_dtype(ckpt.get("precision", "fp32"), device))
    actual, predicted = data["test"][1].numpy(), result.predicted.numpy()
    classes = ckpt["classes"]
    overall, per_class = scores(actual, predicted, classes)
    matrix = confusion_matrix(actual, predicted, labels=list(range(len(classes))))
    metrics = {**overall, "loss": result.loss, "test_images": int(len(actual)),
               "device": device.type, "device_name": device_name(device)}
    confusion = [{"actual": classes[a], "predicted": classes[p], "count": int(matrix[a, p])}
                 for a in range(len(classes)) for p in range(len(classes))]
    return Result(json={"metrics": metrics}, tables={"per_class": per_class, "confusion": confusion},
                  figures={"confusion_figure": confusion_figure(matrix, classes,
                                                                f"{name}: test accuracy {overall['accuracy']:.2%}")})
