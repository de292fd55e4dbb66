"""Training: optimizer and schedule from params, epochs over in-memory batches, early stopping on
validation loss with the best weights restored, and a per-epoch history.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from cnnlab import augment as augment_mod
from cnnlab.batches import DeviceSplit
from cnnlab.checkpoints import checkpoint, count_parameters, load_weights
from cnnlab.inference import autocast_dtype, score
from cnnlab.models import build
from cnnlab.params import model_kwargs, train_config
from cnnlab.prepare import load_prepared
from cnnlab.runtime import environment, pick_device, seed_everything


def uses_channels_last(model: nn.Module, memory_format: str = "auto") -> bool:
    """channels_last (NHWC) lets oneDNN on CPU and cuDNN on GPU pick their fastest convolution
    kernels (benchmarks/ measures the gain). A network without convolutions gains nothing, so `auto`
    keeps it contiguous."""
    if memory_format != "auto":
        return memory_format == "channels_last"
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def make_optimizer(model: nn.Module, cfg: dict) -> torch.optim.Optimizer:
    params = model.parameters()
    # fused kernels do the whole update in one pass; supported on CPU and CUDA for these three
    common = {"lr": cfg["lr"], "weight_decay": cfg["weight_decay"], "fused": True}
    if cfg["optimizer"] == "adam":
        return torch.optim.Adam(params, **common)
    if cfg["optimizer"] == "adamw":
        return torch.optim.AdamW(params, **common)
    return torch.optim.SGD(params, momentum=cfg["momentum"], nesterov=cfg["nesterov"] and cfg["momentum"] > 0,
                           **common)


def make_scheduler(optimizer, cfg: dict, steps_per_epoch: int):
    """Return (scheduler or None, whether it steps per batch rather than per epoch)."""
    kind, total = cfg["scheduler"], cfg["epochs"] * steps_per_epoch
    if kind == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, cfg["step_size"], cfg["gamma"]), False
    if kind == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total), True
    if kind == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, cfg["lr"], total_steps=total), True
    return None, False


def evaluate_split(model: nn.Module, data: DeviceSplit, batch_size: int,
                   dtype: torch.dtype | None = None) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) over a split."""
    scores = score(model, data, batch_size, dtype, keep=False)
    return scores.loss, scores.accuracy


class EarlyStopping:
    """Tracks the best validation loss and a copy of the weights that reached it.

    patience: epochs without improvement before stopping; 0 never stops early.
    """

    def __init__(self, patience: int):
        self.patience = patience
        self.best_loss = float("inf")
        self.best_epoch = 0
        self.best_state: dict | None = None
        self.waited = 0

    def update(self, epoch: int, val_loss: float, model: nn.Module) -> bool:
        """Record an epoch; return True when training should stop."""
        if val_loss < self.best_loss:
            self.best_loss, self.best_epoch, self.waited = val_loss, epoch, 0
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            return False
        self.waited += 1
        return self.patience > 0 and self.waited >= self.patience

    def restore(self, model: nn.Module) -> None:
        if self.best_state is not None:
            model.load_state_dict(self.best_state)


@dataclass
class TrainResult:
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_val_loss: float = float("inf")
    val_accuracy: float = 0.0
    epochs_run: int = 0
    stopped_early: bool = False
    train_seconds: float = 0.0       # wall time of the whole fit, validation included
    images_per_second: float = 0.0   # training passes only
    steps: list[dict] = field(default_factory=list)  # loss and accuracy of every training batch


def training_augmentation(cfg: dict, device: torch.device):
    """The batch augmentation of `train.augment`, seeded from `train.seed`, or None when all is off."""
    options = cfg["augment"]
    if not augment_mod.is_on(options):
        return None
    # its own generator on the training device: drawing on the CPU and copying would sync every batch
    generator = torch.Generator(device=device).manual_seed(cfg["seed"] + 1)
    return lambda images: augment_mod.augment(images, options, generator)


def fit(model: nn.Module, train: DeviceSplit, val: DeviceSplit, cfg: dict, generator: torch.Generator,
        label: str = "", on_epoch: Callable[[dict], None] | None = None) -> TrainResult:
    """Train with early stopping; `on_epoch` receives each epoch's record as soon as it is known
    (the train stage logs it live with dvclive)."""
    optimizer = make_optimizer(model, cfg)
    steps = train.num_batches(cfg["batch_size"])
    scheduler, per_step = make_scheduler(optimizer, cfg, steps)
    stopper = EarlyStopping(cfg["patience"])
    result = TrainResult()
    device = train.labels.device
    dtype = autocast_dtype(cfg["precision"], device)
    # fp16 needs loss scaling against underflowing gradients; bf16 and fp32 do not (scaler disabled)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    augment = training_augmentation(cfg, device)
    # torch.compile pays a compile time up front for faster steps; the original module is kept for
    # validation, early-stopping copies and the checkpoint (its state-dict keys stay plain)
    step_model = torch.compile(model) if cfg["compile"] else model
    # every batch is full but the last: its size is known before the epoch, not recorded per step
    step_size = torch.full((steps,), cfg["batch_size"], device=device, dtype=torch.long)
    step_size[-1] = len(train) - (steps - 1) * cfg["batch_size"]
    start = time.perf_counter()
    pass_seconds = 0.0
    for epoch in range(1, cfg["epochs"] + 1):
        model.train()
        epoch_start = time.perf_counter()
        # per-batch loss and accuracy stay on the device (no host sync inside the step)
        step_loss = torch.zeros(steps, device=device)
        step_correct = torch.zeros(steps, device=device, dtype=torch.long)
        step_lr = []
        bar = tqdm(train.batches(cfg["batch_size"], generator, augment), total=steps, leave=False,
                   mininterval=1.0, desc=f"{label} epoch {epoch}/{cfg['epochs']}", disable=not cfg["progress"])
        for i, (x, y) in enumerate(bar):
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                logits = step_model(x)
                # autocast runs the loss itself in fp32
                loss = F.cross_entropy(logits, y, label_smoothing=cfg["label_smoothing"])
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            step_lr.append(optimizer.param_groups[0]["lr"])
            if per_step:
                scheduler.step()
            step_loss[i] = loss.detach()
            step_correct[i] = (logits.detach().argmax(1) == y).sum()
        lr = optimizer.param_groups[0]["lr"]
        if scheduler is not None and not per_step:
            scheduler.step()
        train_loss = (step_loss * step_size).sum().item() / len(train)
        train_acc = step_correct.sum().item() / len(train)
        for i, (batch_loss, batch_correct, batch_size) in enumerate(
                zip(step_loss.tolist(), step_correct.tolist(), step_size.tolist())):
            result.steps.append({"step": (epoch - 1) * steps + i + 1, "epoch": epoch, "loss": batch_loss,
                                 "accuracy": batch_correct / batch_size, "lr": step_lr[i]})
        pass_seconds += time.perf_counter() - epoch_start
        val_loss, val_acc = evaluate_split(model, val, cfg["eval_batch_size"], dtype)
        result.history.append({
            "epoch": epoch, "train_loss": train_loss, "train_accuracy": train_acc,
            "val_loss": val_loss, "val_accuracy": val_acc, "lr": lr,
            "seconds": time.perf_counter() - epoch_start,
        })
        if on_epoch is not None:
            on_epoch(result.history[-1])
        if cfg["progress"]:
            print(f"{label} epoch {epoch}: train loss {train_loss:.4f} acc {train_acc:.4f} | "
                  f"val loss {val_loss:.4f} acc {val_acc:.4f}", flush=True)
        if stopper.update(epoch, val_loss, model):
            result.stopped_early = True
            break
    result.train_seconds = time.perf_counter() - start
    stopper.restore(model)
    result.epochs_run = len(result.history)
    result.best_epoch, result.best_val_loss = stopper.best_epoch, stopper.best_loss
    result.val_accuracy = result.history[stopper.best_epoch - 1]["val_accuracy"]
    result.images_per_second = result.epochs_run * len(train) / pass_seconds
    return result


def train_model(name: str, params: dict, prepared_dir: Path, on_epoch: Callable[[dict], None] | None = None
                ) -> tuple[dict, dict, list[dict], list[dict]]:
    """Train one model from params; return (checkpoint, metrics, per-epoch history, per-step history)."""
    cfg, options = train_config(params, name), model_kwargs(params, name)
    device = pick_device(cfg["device"])
    generator = seed_everything(cfg["seed"])
    data = load_prepared(prepared_dir, ("train", "val"))
    info = data["info"]
    model = build(name, info["channels"], len(info["classes"]), info["image_size"], **options)
    if cfg["weights"]:
        load_weights(model, cfg["weights"])
    model = model.to(device)
    layout = torch.channels_last if uses_channels_last(model, cfg["memory_format"]) else torch.contiguous_format
    model = model.to(memory_format=layout)
    train = DeviceSplit(*data["train"], info["mean"], info["std"], device, layout)
    val = DeviceSplit(*data["val"], info["mean"], info["std"], device, layout)
    result = fit(model, train, val, cfg, generator, label=name, on_epoch=on_epoch)
    metrics = {
        "parameters": count_parameters(model),
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
        "best_val_loss": result.best_val_loss,
        "val_accuracy": result.val_accuracy,
        "stopped_early": result.stopped_early,
        "train_seconds": round(result.train_seconds, 3),  # to the millisecond: a fast epoch takes about 1 s
        "images_per_second": round(result.images_per_second, 1),
        "train_images": len(train),
        "dataset": info.get("dataset", ""),
        "precision": str(autocast_dtype(cfg["precision"], device) or torch.float32).removeprefix("torch."),
        "memory_format": "channels_last" if layout is torch.channels_last else "contiguous",
        "compiled": cfg["compile"],
        "env": environment(device, cfg["seed"]),
    }
    trained_in = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[autocast_dtype(cfg["precision"], device)]
    return checkpoint(name, model, options, info, trained_in), metrics, result.history, result.steps
