"""Test-set evaluation: predictions in large batches, metrics from scikit-learn, a confusion heatmap."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cnnlab.engine.batches import DeviceBudget, DeviceSplit
from cnnlab.engine.checkpoints import load_checkpoint, tta_of
from cnnlab.figures import confusion_figure
from cnnlab.engine.inference import autocast_dtype, memory_format_for, predict_split
from cnnlab.results import Result
from cnnlab.prepare import load_prepared
from cnnlab.runtime import device_name, pick_device


def confusion_matrix(actual: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """counts[actual class, predicted class]."""
    return np.bincount(actual * num_classes + predicted, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def class_metrics(actual: np.ndarray, predicted: np.ndarray, classes: list[str]) -> tuple[dict, list[dict]]:
    """(overall metrics, one row per class): precision, recall and F1 as scikit-learn's
    precision_recall_fscore_support defines them with zero_division=0 (tests/test_evaluate.py
    compares the two). Computed from the confusion matrix here: importing scikit-learn would
    double the evaluate stage's start-up."""
    matrix = confusion_matrix(actual, predicted, len(classes))
    hits, support, guessed = np.diag(matrix).astype(float), matrix.sum(1), matrix.sum(0)

    def ratio(top, bottom):
        return np.divide(top, bottom, out=np.zeros(len(classes)), where=bottom > 0)

    precision, recall = ratio(hits, guessed), ratio(hits, support)
    f1 = ratio(2 * hits, support + guessed)  # 2tp / (2tp + fp + fn)
    overall = {
        "accuracy": float(hits.sum() / max(matrix.sum(), 1)),
        "macro_precision": float(precision.mean()),
        "macro_recall": float(recall.mean()),
        "macro_f1": float(f1.mean()),
    }
    rows = [{"class": name, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(n)}
            for name, p, r, f, n in zip(classes, precision, recall, f1, support)]
    return overall, rows


def evaluate_model(name: str, checkpoint_path: Path, prepared_dir: Path, batch_size: int,
                   max_device_bytes: int | None = None) -> Result:
    """Everything the evaluate stage writes, by output role."""
    device = pick_device("auto")
    model, ckpt = load_checkpoint(checkpoint_path, device, expected=name)
    data = load_prepared(prepared_dir, ("test",))
    test = DeviceSplit(*data["test"], ckpt["mean"], ckpt["std"], device, memory_format_for(model),
                       budget=DeviceBudget(device, max_device_bytes))
    result = predict_split(model, test, batch_size, autocast_dtype(ckpt.get("precision", "fp32"), device),
                   tta=tta_of(ckpt))
    actual, predicted = data["test"][1].numpy(), result.predicted.numpy()
    classes = ckpt["classes"]
    overall, per_class = class_metrics(actual, predicted, classes)
    matrix = confusion_matrix(actual, predicted, len(classes))
    metrics = {**overall, "loss": result.loss, "test_images": int(len(actual)),
               "device": device.type, "device_name": device_name(device)}
    confusion = [{"actual": classes[a], "predicted": classes[p], "count": int(matrix[a, p])}
                 for a in range(len(classes)) for p in range(len(classes))]
    return Result(json={"metrics": metrics}, tables={"per_class": per_class, "confusion": confusion},
                  figures={"confusion_figure": confusion_figure(matrix, classes,
                                                                f"{name}: test accuracy {overall['accuracy']:.2%}")})
