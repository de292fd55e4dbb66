"""The optimizer, its learning-rate schedule and early stopping, as params.yaml's `train:` names them."""

from __future__ import annotations

import torch
from torch import nn


def make_optimizer(model: nn.Module, cfg: dict) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]  # frozen layers stay out
    common = {"lr": cfg["lr"], "weight_decay": cfg["weight_decay"], "fused": True}  # the update in one kernel
    if cfg["optimizer"] == "adam":
        return torch.optim.Adam(params, betas=tuple(cfg["betas"]), **common)
    if cfg["optimizer"] == "adamw":
        return torch.optim.AdamW(params, betas=tuple(cfg["betas"]), **common)
    return torch.optim.SGD(params, momentum=cfg["momentum"], nesterov=cfg["nesterov"] and cfg["momentum"] > 0,
                           **common)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: dict, steps_per_epoch: int):
    """The schedule of `train.scheduler`; its `per_step` says whether it steps every batch or every epoch."""
    kind, total = cfg["scheduler"], cfg["epochs"] * steps_per_epoch
    if kind == "step":
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, cfg["step_size"], cfg["gamma"])
    elif kind == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total)
    elif kind == "onecycle":
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, cfg["lr"], total_steps=total)
    else:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 1.0)  # a constant rate
    scheduler.per_step = kind in ("cosine", "onecycle")
    return scheduler


class EarlyStopping:
    """Tracks the best validation loss and a copy of the weights that reached it. `patience`: epochs
    without improvement before stopping; 0 never stops early."""

    def __init__(self, patience: int):
        self.patience = patience
        self.best_loss, self.best_epoch, self.best_state, self.waited = float("inf"), 0, None, 0

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

    def state_dict(self) -> dict:
        return {"best_loss": self.best_loss, "best_epoch": self.best_epoch, "best_state": self.best_state,
                "waited": self.waited}

    def load_state_dict(self, state: dict) -> None:
        self.best_loss, self.best_epoch = state["best_loss"], state["best_epoch"]
        self.best_state, self.waited = state["best_state"], state["waited"]
