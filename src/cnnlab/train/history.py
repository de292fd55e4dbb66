"""What a fit records: every step's and every epoch's numbers, the totals, and the progress lines."""

from __future__ import annotations

import math

import torch

from cnnlab import CnnlabError


def new_record() -> dict:
    """A fit's record before its first epoch (a resumed fit continues its snapshot's)."""
    return {"history": [], "steps": [], "watch": [], "stopped_early": False, "train_seconds": 0.0, "pass_seconds": 0.0}


def batch_sizes(images: int, batch_size: int) -> list[int]:
    """The size of every global batch of an epoch: all full but the last."""
    steps = -(-images // batch_size)
    return [batch_size] * (steps - 1) + [images - (steps - 1) * batch_size]


def step_rows(epoch: int, losses: torch.Tensor, corrects: torch.Tensor, lrs: list[float], sizes: list[int]) -> list[dict]:
    first = (epoch - 1) * len(sizes)
    return [{"step": first + i + 1, "epoch": epoch, "loss": loss, "accuracy": correct / size, "lr": lr}
            for i, (loss, correct, size, lr) in enumerate(zip(losses.tolist(), corrects.tolist(), sizes, lrs))]


def epoch_row(epoch: int, losses: torch.Tensor, corrects: torch.Tensor, sizes: list[int]) -> dict:
    images = sum(sizes)
    weights = torch.tensor(sizes, device=losses.device)
    return {"epoch": epoch, "train_loss": (losses * weights).sum().item() / images,
            "train_accuracy": corrects.sum().item() / images}


def check_finite(label: str, epoch: int, losses: torch.Tensor, val_loss: float) -> None:
    """A diverged fit stops with one line; nothing is saved (the stage writes outputs only after)."""
    bad = torch.nonzero(~torch.isfinite(losses)).flatten()
    if len(bad):
        step = int(bad[0])
        raise CnnlabError(f"{label}: training diverged at epoch {epoch}, step {step + 1} of {len(losses)} "
                          f"(loss {losses[step].item()}); nothing was saved: lower the learning rate "
                          f"or check the data")
    if not math.isfinite(val_loss):
        raise CnnlabError(f"{label}: validation loss is {val_loss} after epoch {epoch}; nothing was saved: "
                          f"lower the learning rate or check the data")


def replay(record: dict, on_epoch) -> None:
    """`on_epoch` for the model before training and every epoch already in the record."""
    if on_epoch is None:
        return
    watched = record["watch"]
    if watched:
        on_epoch(None, watched[0])
    for i, row in enumerate(record["history"], start=1):
        on_epoch(row, watched[i] if i < len(watched) else None)


def report(label: str, row: dict, watched: dict | None, progress: bool, on_epoch) -> None:
    if on_epoch is not None:
        on_epoch(row, watched)
    if progress:
        print(f"{label} epoch {row['epoch']}: train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.4f} "
              f"| val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.4f}", flush=True)


def summary(record: dict, best_epoch: int, best_val_loss: float, images: int) -> dict:
    """The fit's record with its totals: the best epoch (whose weights the model holds) and speed."""
    epochs = len(record["history"])
    return {**record, "epochs_run": epochs, "best_epoch": best_epoch, "best_val_loss": best_val_loss,
            "val_accuracy": record["history"][best_epoch - 1]["val_accuracy"],
            "images_per_second": epochs * images / record["pass_seconds"]}
