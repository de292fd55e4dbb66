"""The train stage's work for one model: read the prepared data, build the model, fit it, and
return its checkpoint, metrics and history by output role."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from cnnlab import models
from cnnlab.plumbing.outputs import write_csv
from cnnlab.plumbing.timing import timed
from cnnlab.config.params import model_kwargs, train_config
from cnnlab.engine.batches import DeviceBudget, DeviceSplit
from cnnlab.engine.checkpoints import checkpoint, count_parameters
from cnnlab.engine.inference import autocast_dtype, memory_format_for
from cnnlab.results import Result
from cnnlab.prepare import load_prepared, split_files
from cnnlab.runtime import environment, pick_device, seed_everything
from cnnlab.train import parallel, readahead
from cnnlab.train.build import build_model
from cnnlab.train.loop import fit
from cnnlab.train.resume import Resume, fingerprint
from cnnlab.train.watch import Watch


def write_watch(folder: Path, watched: list[dict]) -> None:
    """<kind>/<epoch>.png for every picture (a step slider in DVC's plots), and curves.csv."""
    folder.mkdir()
    for snapshot in watched:
        for kind, image in snapshot["images"].items():
            (folder / kind).mkdir(exist_ok=True)
            Image.fromarray(image.numpy()).save(folder / kind / f"{snapshot['epoch']}.png")
    write_csv(folder / "curves.csv", [{k: s[k] for k in ("epoch", "deletion_auc", "silhouette")} for s in watched],
              ["epoch", "deletion_auc", "silhouette"])


def train_model(name: str, params: dict, prepared_dir: Path, on_epoch=None, resume_path: Path | None = None) -> Result:
    """Train one model from params. With `resume_path` (and train.resume on), every epoch is
    snapshotted there and an interrupted fit of the same params, data and code continues."""
    cfg, options = train_config(params, name), model_kwargs(params, name)
    device = pick_device(cfg["device"])
    if parallel.world_size() > 1:  # under torchrun: join the others (this rank's GPU on CUDA)
        device = parallel.init(device.type)
    generator = seed_everything(cfg["seed"], deterministic_kernels=device.type != "cpu" or cfg["compile"])
    data = load_prepared(prepared_dir, ("train", "val"))
    model, info = build_model(name, options, cfg, data["info"], device, parallel.world_size())
    memory_format = memory_format_for(model, cfg["memory_format"])
    budget = DeviceBudget(device, params["data"]["max_device_bytes"])
    train = DeviceSplit(*data["train"], info["mean"], info["std"], device, memory_format, budget,
                        readahead.for_split(split_files(prepared_dir, "train")[0]))  # shuffled rows: ask ahead
    val = DeviceSplit(*data["val"], info["mean"], info["std"], device, memory_format, budget)
    init_from_data = models.spec(name).init_from_data
    if init_from_data is not None and not cfg["weights"]:  # e.g. airbench's whitening, from 5,000 images
        init_from_data(model, train.normalise(train.images[:5000]))
    # a snapshot holds one process's random state: a data-parallel fit is not resumed
    resume = Resume(resume_path, fingerprint(name, cfg, options, prepared_dir)) \
        if resume_path is not None and cfg["resume"] and parallel.world_size() == 1 else None
    watch = Watch(name, val, len(info["classes"]), cfg["watch_method"], cfg["seed"]) \
        if cfg["watch"] and parallel.is_lead() else None  # rank 0 pictures the model; the others only train
    with timed("fit"):
        result = fit(model, train, val, cfg, generator, label=name, on_epoch=on_epoch, resume=resume, watch=watch)
    if parallel.world_size() > 1:
        parallel.finish()  # every process has finished before rank 0 writes anything
    dtype = autocast_dtype(cfg["precision"], device)
    metrics = {
        "parameters": count_parameters(model),
        "epochs_run": result["epochs_run"],
        "best_epoch": result["best_epoch"],
        "best_val_loss": result["best_val_loss"],
        "val_accuracy": result["val_accuracy"],
        "stopped_early": result["stopped_early"],
        "train_seconds": round(result["train_seconds"], 3),  # to the millisecond: a fast epoch is short
        "images_per_second": round(result["images_per_second"], 1),
        "train_images": len(train),
        "dataset": info.get("dataset", ""),
        "precision": str(dtype or torch.float32).removeprefix("torch."),
        "memory_format": "channels_last" if memory_format is torch.channels_last else "contiguous",
        "data_on_device": {"train": train.on_device, "val": val.on_device},
        "compiled": cfg["compile"],
        "processes": parallel.world_size(),
        "env": environment(device, cfg["seed"]),
    }
    trained_in = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    saved = checkpoint(name, model, options, info, trained_in, cfg["tta"])
    return Result(json={"metrics": metrics}, tables={"history": result["history"], "steps": result["steps"]},
                  files={"checkpoint": lambda path: torch.save(saved, path),
                         "watch": lambda path: write_watch(path, result["watch"])})
