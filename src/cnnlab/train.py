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

from cnnlab import CnnlabError, augment as augment_mod, distributed, models, timed
from cnnlab.engine.batches import DeviceBudget, DeviceSplit
from cnnlab.engine.checkpoints import (adapt_pretrained, checkpoint, count_parameters, fetch_pretrained,
                                is_pretrained_name, load_weights, pretrained_weights)
from cnnlab.engine.inference import autocast_dtype, score, uses_channels_last
from cnnlab.core.outputs import Result
from cnnlab.core.params import model_kwargs, train_config
from cnnlab.prepare import load_prepared
from cnnlab.runtime import check_memory, environment, pick_device, seed_everything


def _gray_or_rgb(values: tuple[float, ...], channels: int) -> list[float]:
    """Pretrained RGB normalisation, for RGB data or (averaged) for gray data."""
    return list(values) if channels == 3 else [sum(values) / 3]


def make_optimizer(model: nn.Module, cfg: dict) -> torch.optim.Optimizer:
    # frozen layers (train.freeze, airbench's whitening stem) stay out
    params = [p for p in model.parameters() if p.requires_grad]
    # fused kernels do the whole update in one pass; supported on CPU and CUDA for these three
    common = {"lr": cfg["lr"], "weight_decay": cfg["weight_decay"], "fused": True}
    if cfg["optimizer"] == "adam":
        return torch.optim.Adam(params, betas=tuple(cfg["betas"]), **common)
    if cfg["optimizer"] == "adamw":
        return torch.optim.AdamW(params, betas=tuple(cfg["betas"]), **common)
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
                   shard: tuple[int, int] = (0, 1), flip: bool = False) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) over a split; sharded across ranks as `score` does."""
    scores = score(model, data, batch_size, dtype, keep=False, shard=shard, flip=flip)
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
    pass_seconds: float = 0.0        # the training passes only
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
    """Per-epoch snapshots of everything a fit depends on, so that an interrupted fit continues from
    its last finished epoch and ends with the same weights as an uninterrupted one.

    A snapshot is used only if its fingerprint (the training params, the prepared data's description
    and cnnlab's code) matches; written atomically each epoch, removed by the train stage once its
    outputs are in place. It lives outside the pipeline's outputs (cnnlab.core.paths.RESUME), so a
    finished stage never depends on it.
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
        return state if isinstance(state, dict) and state.get("fingerprint") == self.fingerprint else None

    def save(self, state: dict) -> None:
        from cnnlab.core.outputs import write_atomically
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(self.path, lambda path: torch.save({**state, "fingerprint": self.fingerprint}, path))

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


class DataParallel:
    """The data-parallel parts of a fit, one process (ranks == 1) or several under torchrun.

    Every rank draws the same permutation and global batches of `train.batch_size` and takes its
    part of each; DDP averages the gradients, each rank's loss being its sum scaled by ranks / global
    batch size, so the average is the global batch's mean loss exactly as one process computes it.
    Per-step losses and the early-stopping decision are reduced once per epoch; rank 0 reports."""

    def __init__(self, rank: int, ranks: int):
        self.rank, self.ranks = rank, ranks
        self.lead = rank == 0

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        if self.ranks == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def loss(self, logits: torch.Tensor, y: torch.Tensor, smoothing: float, global_size: int
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """(the loss to backpropagate, the batch's loss to record: this rank's sum when several)."""
        if self.ranks == 1:
            loss = F.cross_entropy(logits, y, label_smoothing=smoothing)
            return loss, loss.detach()
        rank_sum = F.cross_entropy(logits, y, label_smoothing=smoothing, reduction="sum")
        return rank_sum * (self.ranks / global_size), rank_sum.detach()

    def reduce_epoch(self, step_loss: torch.Tensor, step_correct: torch.Tensor, step_size: torch.Tensor) -> None:
        """In place: every rank's per-step sums added, the losses back to global means."""
        if self.ranks > 1:
            import torch.distributed as dist
            dist.all_reduce(step_loss)
            dist.all_reduce(step_correct)
            step_loss /= step_size

    def agree(self, stop: bool, device: torch.device) -> bool:
        """The ranks hold the same numbers; rank 0's early-stopping decision is the one followed."""
        if self.ranks == 1:
            return stop
        import torch.distributed as dist
        decision = torch.tensor([int(stop)], device=device)
        dist.broadcast(decision, 0)
        return bool(decision.item())


@dataclass
class FitState:
    """Everything a fit carries from epoch to epoch: what a resume snapshot holds."""
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    per_step: bool                     # the scheduler steps per batch, not per epoch
    scaler: torch.amp.GradScaler
    generators: tuple                  # the shuffling generator, the augmentation's (or None)
    stopper: EarlyStopping
    result: TrainResult = field(default_factory=TrainResult)
    pass_seconds: float = 0.0          # training passes only, for images/s
    epoch: int = 0                     # the last finished epoch

    def snapshot(self) -> dict:
        s = self.stopper
        return {
            "epoch": self.epoch,
            "model": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict(),
            "generators": [g.get_state() if g is not None else None for g in self.generators],
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "stopper": {"best_loss": s.best_loss, "best_epoch": s.best_epoch, "best_state": s.best_state,
                        "waited": s.waited},
            "history": self.result.history, "steps": self.result.steps, "pass_seconds": self.pass_seconds,
            "stopped_early": self.result.stopped_early, "train_seconds": self.result.train_seconds,
        }

    def restore(self, saved: dict) -> None:
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(saved["scheduler"])
        self.scaler.load_state_dict(saved["scaler"])
        for generator, state in zip(self.generators, saved["generators"]):
            if generator is not None:
                generator.set_state(state)
        torch.set_rng_state(saved["torch_rng"])
        if saved["cuda_rng"]:
            torch.cuda.set_rng_state_all(saved["cuda_rng"])
        for key, value in saved["stopper"].items():
            setattr(self.stopper, key, value)
        self.result.history, self.result.steps = saved["history"], saved["steps"]
        self.result.stopped_early, self.result.train_seconds = saved["stopped_early"], saved["train_seconds"]
        self.pass_seconds, self.epoch = saved["pass_seconds"], saved["epoch"]


def batch_sizes(images: int, batch_size: int, device: torch.device) -> torch.Tensor:
    """The size of every global batch of an epoch: all full but the last."""
    steps = -(-images // batch_size)
    sizes = torch.full((steps,), batch_size, device=device, dtype=torch.long)
    sizes[-1] = images - (steps - 1) * batch_size
    return sizes


def train_epoch(step_model: nn.Module, state: FitState, train: DeviceSplit, cfg: dict, sizes: torch.Tensor,
                parallel: DataParallel, augment, dtype, desc: str) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """One pass over the training split: (loss and correct count of every step, on the device: no
    host sync inside the step; the learning rate of every step)."""
    step_model.train()
    device, steps, global_sizes = sizes.device, len(sizes), sizes.tolist()
    step_loss = torch.zeros(steps, device=device)
    step_correct = torch.zeros(steps, device=device, dtype=torch.long)
    step_lr = []
    batches = train.batches(cfg["batch_size"], state.generators[0], augment, shard=(parallel.rank, parallel.ranks))
    bar = tqdm(batches, total=steps, leave=False, mininterval=1.0, desc=desc,
               disable=not (cfg["progress"] and parallel.lead))
    for i, (x, y) in enumerate(bar):
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits = step_model(x)  # autocast runs the loss itself in fp32
            loss, recorded = parallel.loss(logits, y, cfg["label_smoothing"], global_sizes[i])
        state.optimizer.zero_grad(set_to_none=True)
        state.scaler.scale(loss).backward()
        state.scaler.step(state.optimizer)
        state.scaler.update()
        step_lr.append(state.optimizer.param_groups[0]["lr"])
        if state.per_step:
            state.scheduler.step()
        step_loss[i] = recorded
        step_correct[i] = (logits.detach().argmax(1) == y).sum()
    parallel.reduce_epoch(step_loss, step_correct, sizes)
    return step_loss, step_correct, step_lr


def record_epoch(result: TrainResult, epoch: int, step_loss: torch.Tensor, step_correct: torch.Tensor,
                 step_lr: list[float], sizes: torch.Tensor, lr: float) -> dict:
    """Append every step to the history; return the epoch's training numbers."""
    images = int(sizes.sum())
    for i, (batch_loss, batch_correct, batch_size) in enumerate(
            zip(step_loss.tolist(), step_correct.tolist(), sizes.tolist())):
        result.steps.append({"step": (epoch - 1) * len(sizes) + i + 1, "epoch": epoch, "loss": batch_loss,
                             "accuracy": batch_correct / batch_size, "lr": step_lr[i]})
    return {"epoch": epoch, "train_loss": (step_loss * sizes).sum().item() / images,
            "train_accuracy": step_correct.sum().item() / images}


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


def start_fit(model: nn.Module, cfg: dict, steps: int, dtype, generators: tuple) -> FitState:
    optimizer = make_optimizer(model, cfg)
    scheduler, per_step = make_scheduler(optimizer, cfg, steps)
    # fp16 needs loss scaling against underflowing gradients; bf16 and fp32 do not (scaler disabled)
    scaler = torch.amp.GradScaler(next(model.parameters()).device.type, enabled=dtype == torch.float16)
    return FitState(model, optimizer, scheduler, per_step, scaler, generators, EarlyStopping(cfg["patience"]))


def fit(model: nn.Module, train: DeviceSplit, val: DeviceSplit, cfg: dict, generator: torch.Generator,
        label: str = "", on_epoch: Callable[[dict], None] | None = None, resume: Resume | None = None,
        shard: tuple[int, int] = (0, 1)) -> TrainResult:
    """Train with early stopping on validation loss, the best epoch's weights restored. `on_epoch`
    receives each epoch's record as soon as it is known (the train stage logs it live); `resume`
    snapshots every epoch and continues an interrupted fit; `shard=(rank, ranks)`: data-parallel."""
    device = train.labels.device
    dtype = autocast_dtype(cfg["precision"], device)
    parallel = DataParallel(*shard)
    augment, augment_generator = training_augmentation(cfg, device, parallel.rank)
    sizes = batch_sizes(len(train), cfg["batch_size"], device)
    state = start_fit(model, cfg, len(sizes), dtype, (generator, augment_generator))
    # the module that steps may be wrapped (DDP) and compiled; validation, the early-stopping copies
    # and the checkpoint use the plain one (its state-dict keys stay plain)
    step_model = parallel.wrap(model, device)
    if cfg["compile"]:
        step_model = torch.compile(step_model)
    saved = resume.load() if resume is not None else None
    if saved is not None:
        state.restore(saved)
        if cfg["progress"]:
            print(f"{label}: resuming after epoch {state.epoch} (train.resume)", flush=True)
    clock = time.perf_counter()
    for epoch in range(state.epoch + 1, cfg["epochs"] + 1):
        if state.result.stopped_early:
            break  # resumed from the epoch that stopped it
        started = time.perf_counter()
        step_loss, step_correct, step_lr = train_epoch(step_model, state, train, cfg, sizes, parallel, augment,
                                                       dtype, f"{label} epoch {epoch}/{cfg['epochs']}")
        lr = state.optimizer.param_groups[0]["lr"]
        if state.scheduler is not None and not state.per_step:
            state.scheduler.step()
        record = record_epoch(state.result, epoch, step_loss, step_correct, step_lr, sizes, lr)
        state.pass_seconds += time.perf_counter() - started
        val_loss, val_acc = evaluate_split(model, val, cfg["eval_batch_size"], dtype, shard, cfg["flip_tta"])
        record.update(val_loss=val_loss, val_accuracy=val_acc, lr=lr, seconds=time.perf_counter() - started)
        state.result.history.append(record)
        _check_finite(label or "model", epoch, step_loss, val_loss)
        state.result.stopped_early = parallel.agree(state.stopper.update(epoch, val_loss, model), device)
        state.result.train_seconds += time.perf_counter() - clock
        clock = time.perf_counter()
        state.epoch = epoch
        if resume is not None:  # before anything is reported: a reported epoch is a saved one
            resume.save(state.snapshot())
        if parallel.lead:
            report_epoch(record, label, cfg["progress"], on_epoch)
    return finish_fit(state, len(train), clock)


def report_epoch(record: dict, label: str, progress: bool, on_epoch: Callable[[dict], None] | None) -> None:
    if on_epoch is not None:
        on_epoch(record)
    if progress:
        print(f"{label} epoch {record['epoch']}: train loss {record['train_loss']:.4f} acc "
              f"{record['train_accuracy']:.4f} | val loss {record['val_loss']:.4f} acc {record['val_accuracy']:.4f}",
              flush=True)


def finish_fit(state: FitState, images: int, clock: float) -> TrainResult:
    """The best epoch's weights back in the model; the fit's summary numbers."""
    result = state.result
    result.train_seconds += time.perf_counter() - clock
    state.stopper.restore(state.model)
    result.epochs_run = len(result.history)
    result.best_epoch, result.best_val_loss = state.stopper.best_epoch, state.stopper.best_loss
    result.val_accuracy = result.history[state.stopper.best_epoch - 1]["val_accuracy"]
    result.pass_seconds = state.pass_seconds
    result.images_per_second = result.epochs_run * images / state.pass_seconds
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
    for split in ("train_images.npy", "train_labels.npy", "val_images.npy", "val_labels.npy"):
        digest.update(str((Path(prepared_dir) / split).stat().st_size).encode())
    for source in sorted(Path(cnnlab.__file__).parent.rglob("*.py")):
        digest.update(source.read_bytes())
    return digest.hexdigest()


def train_model(name: str, params: dict, prepared_dir: Path, on_epoch: Callable[[dict], None] | None = None,
                resume_path: Path | None = None) -> Result:
    """Train one model from params; return its checkpoint, metrics, per-epoch and per-step history
    by output role. With `resume_path` (and train.resume on), every epoch is snapshotted there and
    an interrupted fit of the same params, data and code continues from its last snapshot."""
    cfg, options = train_config(params, name), model_kwargs(params, name)
    spec = models.spec(name)
    device = pick_device(cfg["device"])
    ranks = distributed.world_size()
    if ranks > 1:  # under torchrun: join the others (this rank's GPU on CUDA)
        device = distributed.init(device.type)
    generator = seed_everything(cfg["seed"], deterministic_kernels=device.type != "cpu" or cfg["compile"])
    data = load_prepared(prepared_dir, ("train", "val"))
    info = data["info"]
    if info["image_size"] < spec.min_image_size:
        raise CnnlabError(f"params.yaml: data.image_size {info['image_size']} is too small for {name} (it needs "
                          f"at least {spec.min_image_size} pixels); raise data.image_size or train another model")
    shape = (info["channels"], len(info["classes"]), info["image_size"])
    with torch.device("meta"):  # the architecture without its memory: count before allocating
        parameters = count_parameters(spec.build(*shape, **options))
    # weights, gradients, two Adam moments and the best epoch's copy: five float32 copies
    check_memory(parameters * 4 * 5, f"{name} with {parameters:,} parameters", device)
    model = spec.build(*shape, **options)
    if is_pretrained_name(cfg["weights"]):  # torchvision's weights, normalised as they were trained
        kept = adapt_pretrained(model, fetch_pretrained(pretrained_weights(name, cfg["weights"])))
        info = {**info, "mean": _gray_or_rgb(spec.pretrained_mean, info["channels"]),
                "std": _gray_or_rgb(spec.pretrained_std, info["channels"])}
        if cfg["progress"]:
            print(f"{name}: ImageNet weights loaded; trained from scratch: {', '.join(kept) or 'nothing'}", flush=True)
    elif cfg["weights"]:
        load_weights(model, cfg["weights"])
    if cfg["sync_batchnorm"] and ranks > 1:
        if device.type != "cuda":
            raise CnnlabError("params.yaml: train.sync_batchnorm needs CUDA (PyTorch's SyncBatchNorm runs on "
                              "GPUs only); set it to false for processes on a CPU")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if cfg["freeze"]:  # train the declared head only
        head_parameters = set(map(id, model.get_submodule(spec.head).parameters()))
        for parameter in model.parameters():
            parameter.requires_grad_(id(parameter) in head_parameters)
    model = model.to(device)
    layout = torch.channels_last if uses_channels_last(model, cfg["memory_format"]) else torch.contiguous_format
    model = model.to(memory_format=layout)
    budget = DeviceBudget(device, params["data"]["max_device_bytes"])
    train = DeviceSplit(*data["train"], info["mean"], info["std"], device, layout, budget)
    val = DeviceSplit(*data["val"], info["mean"], info["std"], device, layout, budget)
    if spec.init_from_data is not None and not cfg["weights"]:  # e.g. airbench's whitening, from 5,000 images
        spec.init_from_data(model, train.normalise(train.images[:5000]))
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
        "train_seconds": round(result.train_seconds, 3),  # to the millisecond: a fast epoch is short
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
    saved = checkpoint(name, model, options, info, trained_in, cfg["flip_tta"])
    return Result(json={"metrics": metrics}, tables={"history": result.history, "steps": result.steps},
                  files={"checkpoint": lambda path: torch.save(saved, path)})
