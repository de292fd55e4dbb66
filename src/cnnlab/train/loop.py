"""The training loop: one epoch of training, one evaluation, and the fit that repeats them with early
stopping on the validation loss. The loss is `train.loss`'s, from cnnlab/losses/: training and
validation both score with it."""

from __future__ import annotations

import time

import torch
from tqdm import tqdm

from cnnlab import augment, losses
from cnnlab.engine.inference import autocast_dtype, run
from cnnlab.train import history, parallel
from cnnlab.train.optim import EarlyStopping, make_optimizer, make_scheduler

# ---------------------------------------------------------------------------------------------
#                                     Training and evaluation
# ---------------------------------------------------------------------------------------------


def train_one_epoch(model, loss_function, optimizer, scheduler, scaler, train, cfg, generators, desc=""):
    """One pass over the training split: (each step's loss and correct count, on the device; its lr)."""
    model.train()
    dtype = autocast_dtype(cfg["precision"], train.device)
    sizes = history.batch_sizes(len(train), cfg["batch_size"])
    batches = train.batches(cfg["batch_size"], generators[0], augment.for_training(cfg, generators[1]),
                            shard=parallel.shard())
    step_losses, step_corrects, step_lrs = [], [], []
    for i, (x, y) in enumerate(tqdm(batches, desc, len(sizes), leave=False, mininterval=1.0,
                                    disable=not (cfg["progress"] and parallel.is_lead()))):
        with torch.autocast(train.device.type, dtype=dtype, enabled=dtype is not None):
            logits = model(x)  # autocast runs the loss itself in fp32
            loss = parallel.rank_share(loss_function(logits, y, cfg["label_smoothing"]), logits, sizes[i])
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        step_lrs.append(optimizer.param_groups[0]["lr"])
        if scheduler.per_step:
            scheduler.step()
        step_losses.append(loss.detach())  # kept on the device: no wait for the GPU inside the step
        step_corrects.append((logits.detach().argmax(1) == y).sum())
    step_losses, step_corrects = parallel.sum_over_ranks(torch.stack(step_losses), torch.stack(step_corrects))
    return step_losses / parallel.world_size(), step_corrects, step_lrs


def evaluate(model, loss_function, data, cfg):
    """(mean loss, accuracy) over a split; each process scores its part and the sums are added."""
    dtype = autocast_dtype(cfg["precision"], data.device)
    loss = torch.zeros((), device=data.device)
    correct = torch.zeros((), device=data.device, dtype=torch.long)
    for logits, y in run(model, data, cfg["eval_batch_size"], dtype, parallel.my_part(len(data)), cfg["tta"]):
        loss += loss_function(logits, y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
    loss, correct = parallel.sum_over_ranks(loss.double(), correct.double())  # float64 holds both exactly
    return loss.item() / len(data), correct.item() / len(data)

# ---------------------------------------------------------------------------------------------
#                                             Fit
# ---------------------------------------------------------------------------------------------


def fit(model, train, val, cfg, generator, label="model", on_epoch=None, resume=None, watch=None):
    """Train for `epochs`, stop when the validation loss has not improved for `patience` epochs, and
    leave the best epoch's weights in the model. Returns its record: history, steps and totals.
    `watch(model, epoch)`, when given, pictures the model before training and after every epoch."""
    loss_function = losses.function(cfg["loss"])
    dtype = autocast_dtype(cfg["precision"], train.device)
    generators = (generator, augment.generator(cfg, train.device, parallel.rank()))
    sizes = history.batch_sizes(len(train), cfg["batch_size"])
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg, len(sizes))
    scaler = torch.amp.GradScaler(train.device.type, enabled=dtype == torch.float16)  # fp16 needs loss scaling
    stopper = EarlyStopping(cfg["patience"])
    stepped = parallel.wrap(model)  # DDP and torch.compile wrap the model that steps; the checkpoint keeps it plain
    if cfg["compile"]:
        stepped = torch.compile(stepped)
    state = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "scaler": scaler, "stopper": stopper,
             "generators": generators}
    record = resume.load(state, label) if resume else history.new_record()
    if watch and not record["watch"]:
        record["watch"].append(watch(model, 0))
    if parallel.is_lead():  # what is already known, again: a resumed fit's live log starts afresh
        history.replay(record, on_epoch)
    for epoch in range(len(record["history"]) + 1, cfg["epochs"] + 1):
        if record["stopped_early"]:
            break  # resumed after the epoch that stopped it
        started = time.perf_counter()
        step_losses, step_corrects, step_lrs = train_one_epoch(
            stepped, loss_function, optimizer, scheduler, scaler, train, cfg, generators,
            f"{label} epoch {epoch}/{cfg['epochs']}")
        lr = optimizer.param_groups[0]["lr"]
        if not scheduler.per_step:
            scheduler.step()
        record["steps"] += history.step_rows(epoch, step_losses, step_corrects, step_lrs, sizes)
        row = history.epoch_row(epoch, step_losses, step_corrects, sizes)
        record["pass_seconds"] += time.perf_counter() - started
        row["val_loss"], row["val_accuracy"] = evaluate(model, loss_function, val, cfg)
        row.update(lr=lr, seconds=time.perf_counter() - started)
        record["history"].append(row)
        history.check_finite(label, epoch, step_losses, row["val_loss"])
        record["stopped_early"] = parallel.agree(stopper.update(epoch, row["val_loss"], model))
        record["train_seconds"] += time.perf_counter() - started
        if watch:
            record["watch"].append(watch(model, epoch))
        if resume:  # before anything is reported: a reported epoch is a saved one
            resume.save(state, record)
        if parallel.is_lead():
            history.report(label, row, record["watch"][-1] if watch else None, cfg["progress"], on_epoch)
    stopper.restore(model)
    return history.summary(record, stopper.best_epoch, stopper.best_loss, len(train))
