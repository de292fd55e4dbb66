"""Training: optimizer and schedule from params, epochs over in-memory batches, early stopping on
validation loss with the best weights restored, and a per-epoch history.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from cnnlab import CnnlabError, augment as augment_mod, distributed, timed
from cnnlab.batches import DeviceBudget, DeviceSplit
from cnnlab.checkpoints import (IMAGENET_MEAN, IMAGENET_STD, adapt_pretrained, checkpoint, count_parameters,
                                fetch_pretrained, is_pretrained_name, load_weights, pretrained_weights)
from cnnlab.inference import autocast_dtype, head, score
from cnnlab.models import build
from cnnlab.params import model_kwargs, train_config
from cnnlab.prepare import load_prepared
from cnnlab.runtime import check_memory, environment, pick_device, seed_everything


def uses_channels_last(model: nn.Module, memory_format: str = "auto") -> bool:
    """channels_last (NHWC) lets oneDNN on CPU and cuDNN on GPU pick their fastest convolution
    kernels (benchmarks/ measures the gain). A network without convolutions gains nothing, so `auto`
    keeps it contiguous."""
    if memory_format != "auto":
        return memory_format == "channels_last"
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def _imagenet(values: list[float], channels: int) -> list[float]:
    return values if channels == 3 else [sum(values) / 3]


def make_optimizer(model: nn.Module, cfg: dict) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]  # frozen layers (train.freeze) stay out
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


def evaluate_split(model: nn.Module, data: DeviceSplit, batch_size: int, dtype: torch.dtype | None = None,
                   shard: tuple[int, int] = (0, 1)) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) over a split; sharded across ranks as `score` does."""
    scores = score(model, data, batch_size, dtype, keep=False, shard=shard)
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


def training_augmentation(cfg: dict, device: torch.device, rank: int = 0):
    """(the batch augmentation of `train.augment`, its generator seeded from `train.seed` and the
    rank), or (None, None) when all is off."""
    options = cfg["augment"]
    if not augment_mod.is_on(options):
        return None, None
    # its own generator on the training device: drawing on the CPU and copying would sync every batch
    generator = torch.Generator(device=device).manual_seed(cfg["seed"] + 1 + rank)
    return (lambda images: augment_mod.augment(images, options, generator)), generator


class Resume:
    """Per-epoch snapshots of everything a fit depends on (weights, optimizer, schedule, every random
    generator, early stopping, the history so far), so that an interrupted fit continues from its
    last finished epoch and ends with the same weights as an uninterrupted one.

    A snapshot is used only if its fingerprint (the training params, the prepared data's description
    and cnnlab's code) matches, and only while its fit is unfinished; written atomically each epoch.
    """

    def __init__(self, path: Path, fingerprint: str):
        self.path, self.fingerprint = Path(path), fingerprint

    def load(self) -> dict | None:
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception:  # a snapshot cut short by a kill, or an old format: start afresh
            return None
        if not isinstance(state, dict) or state.get("fingerprint") != self.fingerprint or state.get("finished"):
            return None
        return state

    def save(self, state: dict) -> None:
        from cnnlab.outputs import write_atomically
        write_atomically(self.path, lambda path: torch.save({**state, "fingerprint": self.fingerprint}, path))


def _snapshot(epoch, model, optimizer, scheduler, scaler, generators, stopper, result, pass_seconds):
    return {
        "epoch": epoch,
        "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict(),
        "generators": [g.get_state() if g is not None else None for g in generators],
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "stopper": {"best_loss": stopper.best_loss, "best_epoch": stopper.best_epoch,
                    "best_state": stopper.best_state, "waited": stopper.waited},
        "history": result.history, "steps": result.steps, "pass_seconds": pass_seconds,
        "stopped_early": result.stopped_early, "train_seconds": result.train_seconds,
    }


def _restore(state, model, optimizer, scheduler, scaler, generators, stopper, result) -> float:
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    for generator, saved in zip(generators, state["generators"]):
        if generator is not None:
            generator.set_state(saved)
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"]:
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    stopper.__dict__.update(state["stopper"])
    result.history, result.steps, result.stopped_early = state["history"], state["steps"], state["stopped_early"]
    result.train_seconds = state["train_seconds"]
    return state["pass_seconds"]


def _check_finite(label: str, epoch: int, step_loss: torch.Tensor, val_loss: float) -> None:
    """A diverged fit stops with one line; nothing is saved (the stage writes outputs only after)."""
    bad = torch.nonzero(~torch.isfinite(step_loss)).flatten()
    if len(bad):
        step = int(bad[0])
        raise CnnlabError(f"{label}: training diverged at epoch {epoch}, step {step + 1} of {len(step_loss)} "
                          f"(loss {step_loss[step].item()}); nothing was saved: lower the learning rate "
                          f"or check the data")
    if not math.isfinite(val_loss):
        raise CnnlabError(f"{label}: validation loss is {val_loss} after epoch {epoch}; nothing was saved: "
                          f"lower the learning rate or check the data")


def fit(model: nn.Module, train: DeviceSplit, val: DeviceSplit, cfg: dict, generator: torch.Generator,
        label: str = "", on_epoch: Callable[[dict], None] | None = None, resume: Resume | None = None,
        shard: tuple[int, int] = (0, 1)) -> TrainResult:
    """Train with early stopping; `on_epoch` receives each epoch's record as soon as it is known
    (the train stage logs it live with dvclive); `resume` snapshots every epoch and continues from
    the last snapshot of an interrupted fit.

    `shard=(rank, ranks)` with ranks > 1: data-parallel under torchrun. Every rank draws the same
    permutation and global batches of `train.batch_size` and takes its part of each; DDP averages
    the gradients, each rank's loss being its sum scaled by ranks / global batch size, so the
    average is the global batch's mean loss exactly as one process computes it. Per-step losses,
    validation and the early-stopping decision are reduced across ranks; rank 0 reports."""
    rank, ranks = shard
    lead = rank == 0
    optimizer = make_optimizer(model, cfg)
    steps = train.num_batches(cfg["batch_size"])
    scheduler, per_step = make_scheduler(optimizer, cfg, steps)
    stopper = EarlyStopping(cfg["patience"])
    result = TrainResult()
    device = train.labels.device
    dtype = autocast_dtype(cfg["precision"], device)
    # fp16 needs loss scaling against underflowing gradients; bf16 and fp32 do not (scaler disabled)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    augment, augment_generator = training_augmentation(cfg, device, rank)
    generators = (generator, augment_generator)
    # torch.compile pays a compile time up front for faster steps; the original module is kept for
    # validation, early-stopping copies and the checkpoint (its state-dict keys stay plain)
    step_model = model
    if ranks > 1:
        from torch.nn.parallel import DistributedDataParallel
        step_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg["compile"]:  # inductor's own determinism flag (seed_everything sets only the eager one)
        torch.use_deterministic_algorithms(True, warn_only=True)
        step_model = torch.compile(step_model)
    # every batch is full but the last: its size is known before the epoch, not recorded per step
    step_size = torch.full((steps,), cfg["batch_size"], device=device, dtype=torch.long)
    step_size[-1] = len(train) - (steps - 1) * cfg["batch_size"]
    global_sizes = step_size.tolist()
    start = time.perf_counter()
    pass_seconds, first_epoch = 0.0, 1
    saved = resume.load() if resume is not None else None
    if saved is not None:
        pass_seconds = _restore(saved, model, optimizer, scheduler, scaler, generators, stopper, result)
        first_epoch = cfg["epochs"] + 1 if result.stopped_early else saved["epoch"] + 1
        if cfg["progress"]:
            print(f"{label}: resuming after epoch {saved['epoch']} (train.resume)", flush=True)
    for epoch in range(first_epoch, cfg["epochs"] + 1):
        step_model.train()
        epoch_start = time.perf_counter()
        # per-batch loss and accuracy stay on the device (no host sync inside the step)
        step_loss = torch.zeros(steps, device=device)
        step_correct = torch.zeros(steps, device=device, dtype=torch.long)
        step_lr = []
        bar = tqdm(train.batches(cfg["batch_size"], generator, augment, shard=shard), total=steps, leave=False,
                   mininterval=1.0, desc=f"{label} epoch {epoch}/{cfg['epochs']}",
                   disable=not (cfg["progress"] and lead))
        for i, (x, y) in enumerate(bar):
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                logits = step_model(x)
                # autocast runs the loss itself in fp32
                if ranks == 1:
                    loss = F.cross_entropy(logits, y, label_smoothing=cfg["label_smoothing"])
                else:  # this rank's sum; DDP's mean over ranks then equals the global batch's mean
                    rank_sum = F.cross_entropy(logits, y, label_smoothing=cfg["label_smoothing"], reduction="sum")
                    loss = rank_sum * (ranks / global_sizes[i])
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            step_lr.append(optimizer.param_groups[0]["lr"])
            if per_step:
                scheduler.step()
            step_loss[i] = loss.detach() if ranks == 1 else rank_sum.detach()
            step_correct[i] = (logits.detach().argmax(1) == y).sum()
        if ranks > 1:  # one reduction per epoch, not per step: the global per-step losses
            import torch.distributed as dist
            dist.all_reduce(step_loss)
            dist.all_reduce(step_correct)
            step_loss /= step_size
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
        val_loss, val_acc = evaluate_split(model, val, cfg["eval_batch_size"], dtype, shard)
        result.history.append({
            "epoch": epoch, "train_loss": train_loss, "train_accuracy": train_acc,
            "val_loss": val_loss, "val_accuracy": val_acc, "lr": lr,
            "seconds": time.perf_counter() - epoch_start,
        })
        _check_finite(label or "model", epoch, step_loss, val_loss)
        result.stopped_early = stopper.update(epoch, val_loss, model)
        if ranks > 1:  # the ranks hold the same numbers; rank 0's decision is the one followed
            decision = torch.tensor([int(result.stopped_early)], device=device)
            dist.broadcast(decision, 0)
            result.stopped_early = bool(decision.item())
        result.train_seconds += time.perf_counter() - start
        start = time.perf_counter()
        if resume is not None:  # before anything is reported: a reported epoch is a saved one
            resume.save(_snapshot(epoch, model, optimizer, scheduler, scaler, generators, stopper, result,
                                  pass_seconds))
        if on_epoch is not None and lead:
            on_epoch(result.history[-1])
        if cfg["progress"] and lead:
            print(f"{label} epoch {epoch}: train loss {train_loss:.4f} acc {train_acc:.4f} | "
                  f"val loss {val_loss:.4f} acc {val_acc:.4f}", flush=True)
        if result.stopped_early:
            break
    result.train_seconds += time.perf_counter() - start
    stopper.restore(model)
    result.epochs_run = len(result.history)
    result.best_epoch, result.best_val_loss = stopper.best_epoch, stopper.best_loss
    result.val_accuracy = result.history[stopper.best_epoch - 1]["val_accuracy"]
    result.images_per_second = result.epochs_run * len(train) / pass_seconds
    return result


def fingerprint(name: str, cfg: dict, options: dict, prepared_dir: Path) -> str:
    """What a resume snapshot must match: the training params (display options aside), the prepared
    data's description and sizes, and cnnlab's own code."""
    import hashlib
    import json
    import cnnlab
    digest = hashlib.sha256(json.dumps({"model": name, "options": options, "train": {
        k: v for k, v in cfg.items() if k not in ("progress", "resume")}}, sort_keys=True).encode())
    digest.update((Path(prepared_dir) / "info.json").read_bytes())
    for split in ("train.pt", "val.pt"):
        digest.update(str((Path(prepared_dir) / split).stat().st_size).encode())
    for source in sorted(Path(cnnlab.__file__).parent.rglob("*.py")):
        digest.update(source.read_bytes())
    return digest.hexdigest()


def train_model(name: str, params: dict, prepared_dir: Path, on_epoch: Callable[[dict], None] | None = None,
                resume_path: Path | None = None) -> tuple[dict, dict, list[dict], list[dict]]:
    """Train one model from params; return (checkpoint, metrics, per-epoch history, per-step history).
    With `resume_path` (and train.resume on), every epoch is snapshotted there and an interrupted
    fit of the same params, data and code continues from its last snapshot."""
    cfg, options = train_config(params, name), model_kwargs(params, name)
    device = pick_device(cfg["device"])
    ranks = distributed.world_size()
    if ranks > 1:  # under torchrun: join the others (this rank's GPU on CUDA)
        device = distributed.init(device.type)
    generator = seed_everything(cfg["seed"])
    data = load_prepared(prepared_dir, ("train", "val"))
    info = data["info"]
    shape = (info["channels"], len(info["classes"]), info["image_size"])
    with torch.device("meta"):  # the architecture without its memory: count before allocating
        parameters = count_parameters(build(name, *shape, **options))
    # weights, gradients, two Adam moments and the best epoch's copy: five float32 copies
    check_memory(parameters * 4 * 5, f"{name} with {parameters:,} parameters", device)
    model = build(name, *shape, **options)
    pretrained = is_pretrained_name(cfg["weights"])
    if pretrained:  # torchvision's ImageNet weights, normalised as they were trained
        kept = adapt_pretrained(model, fetch_pretrained(pretrained_weights(name, cfg["weights"])))
        info = {**info, "mean": _imagenet(IMAGENET_MEAN, info["channels"]), "std": _imagenet(IMAGENET_STD, info["channels"])}
        if cfg["progress"]:
            print(f"{name}: ImageNet weights loaded; trained from scratch: {', '.join(kept) or 'nothing'}", flush=True)
    elif cfg["weights"]:
        load_weights(model, cfg["weights"])
    if cfg["sync_batchnorm"] and ranks > 1:
        if device.type != "cuda":
            raise CnnlabError("params.yaml: train.sync_batchnorm needs CUDA (PyTorch's SyncBatchNorm runs on "
                              "GPUs only); set it to false for processes on a CPU")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if cfg["freeze"]:  # train the head only
        head_parameters = set(map(id, head(model).parameters()))
        for parameter in model.parameters():
            parameter.requires_grad_(id(parameter) in head_parameters)
    model = model.to(device)
    layout = torch.channels_last if uses_channels_last(model, cfg["memory_format"]) else torch.contiguous_format
    model = model.to(memory_format=layout)
    budget = DeviceBudget(device, params["data"]["max_device_bytes"])
    train = DeviceSplit(*data["train"], info["mean"], info["std"], device, layout, budget)
    val = DeviceSplit(*data["val"], info["mean"], info["std"], device, layout, budget)
    # snapshots hold one process's random state: a data-parallel fit is not resumed
    resume = Resume(resume_path, fingerprint(name, cfg, options, prepared_dir)) \
        if resume_path is not None and cfg["resume"] and ranks == 1 else None
    with timed("fit"):
        result = fit(model, train, val, cfg, generator, label=name, on_epoch=on_epoch, resume=resume,
                     shard=(distributed.rank(), ranks))
    if ranks > 1:  # every rank has finished before rank 0 writes anything
        distributed.finish()
    dtype = autocast_dtype(cfg["precision"], device)
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
        "precision": str(dtype or torch.float32).removeprefix("torch."),
        "memory_format": "channels_last" if layout is torch.channels_last else "contiguous",
        "data_on_device": {"train": train.on_device, "val": val.on_device},
        "compiled": cfg["compile"],
        "processes": ranks,
        "env": environment(device, cfg["seed"]),
    }
    trained_in = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    return checkpoint(name, model, options, info, trained_in), metrics, result.history, result.steps
