"""MNIST in one epoch: cnnlab's `speedrun` recipe against the fastest public MNIST recipe, on the
same CPU, in one process, on the same data.

    python benchmarks/speedrun.py              # 5 seeds each: about 2 minutes on 2 CPU cores
    python benchmarks/speedrun.py --seeds 2    # a quick look
    python benchmarks/speedrun.py --device cuda --out /tmp/gpu   # on a GPU (benchmarks/gpu.py does)

The peer is tuomaso/train_mnist_fast as its description gives it, written here in plain PyTorch
as its code runs (fp32, PyTorch's default memory layout): conv 5x5x24, max-pool, ReLU, conv
3x3x32, max-pool, ReLU, fc 256, fc 10; Adam lr 0.01 betas (0.7, 0.9), one-cycle, batch 256, one
epoch over all 60,000 training images held in memory as one tensor.

cnnlab's side is the `speedrun:` section of params.yaml run through cnnlab's own `fit` (the code
the train stage runs), on the same 60,000 images; its time is the training pass only (fit's
validation pass, here over the test set for the record, is not counted and selects nothing: one
epoch, patience 0). A third row runs the peer's recipe with cnnlab's layout and precision
(channels_last, and bf16 where the CPU computes it), to show what the recipe adds and what the
data path does.

Both score the 10,000 test images. Seeds alternate between the contestants (peer, cnnlab, peer
tuned) after one unscored warm-up of each, so a drift of the shared VM falls on all of them.
Results: benchmarks/results/speedrun.json and speedrun.md (CPU model, threads, every seed).
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab import models
from cnnlab.config import params as params_mod
from cnnlab.engine.batches import DeviceSplit
from cnnlab.datasets import formats as datasets
from cnnlab.datasets.files import mirror_from_env
from cnnlab.engine.inference import autocast_dtype, memory_format_for, predict_split
from cnnlab.prepare import channel_stats
from cnnlab.runtime import environment, seed_everything
from cnnlab.config.params import train_config
from cnnlab.train.loop import fit

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
TARGET_ACCURACY, TARGET_TIME_RATIO = 0.990, 0.9
Data = tuple[torch.Tensor, torch.Tensor]  # uint8 images (N, 1, 28, 28), int64 labels


def peer_network() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 24, 5), nn.MaxPool2d(2), nn.ReLU(), nn.Conv2d(24, 32, 3), nn.MaxPool2d(2),
                         nn.ReLU(), nn.Flatten(), nn.Linear(800, 256), nn.ReLU(), nn.Linear(256, 10))


def peer(train: Data, test: Data, seed: int, tuned: bool = False) -> dict:
    """The peer's recipe, timed from its first batch to its last optimizer step (on the device the
    data is on). `tuned`: the same with cnnlab's memory layout and autocast."""
    images, labels = train
    device = labels.device
    mean, std = channel_stats(images.cpu())
    fmt = torch.channels_last if tuned else torch.contiguous_format
    dtype = autocast_dtype("auto", device) if tuned else None

    def normalise(x: torch.Tensor) -> torch.Tensor:
        return ((x.float() / 255 - mean[0]) / std[0]).contiguous(memory_format=fmt)

    torch.manual_seed(seed)
    model = peer_network().to(device, memory_format=fmt)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01, betas=(0.7, 0.9))
    steps = -(-len(labels) // 256)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 0.01, total_steps=steps)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed)).to(device)
    model.train()
    synchronize(device)
    start = time.perf_counter()
    for first in range(0, len(labels), 256):
        index = order[first:first + 256]
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = F.cross_entropy(model(normalise(images.index_select(0, index))), labels.index_select(0, index))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    synchronize(device)
    seconds = time.perf_counter() - start
    model.eval()
    correct = 0
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        for first in range(0, len(test[1]), 1000):
            correct += (model(normalise(test[0][first:first + 1000])).argmax(1) == test[1][first:first + 1000]).sum()
    return {"accuracy": int(correct) / len(test[1]), "seconds": seconds}


def cnnlab_speedrun(train: Data, test: Data, seed: int, params: dict) -> dict:
    """params.yaml's `speedrun:` recipe through cnnlab's fit; the training pass's time."""
    cfg = {**train_config(params, "speedrun"), "seed": seed, "progress": False}
    device = train[1].device
    mean, std = channel_stats(train[0].cpu())
    generator = seed_everything(seed)
    model = models.build("speedrun", 1, 10, train[0].shape[-1])
    memory_format = memory_format_for(model, cfg["memory_format"])
    model = model.to(device, memory_format=memory_format)
    train_split = DeviceSplit(*train, mean, std, device, memory_format)
    test_split = DeviceSplit(*test, mean, std, device, memory_format)
    result = fit(model, train_split, test_split, cfg, generator, label="speedrun")
    dtype = autocast_dtype(cfg["precision"], device)
    return {"accuracy": predict_split(model, test_split, 1000, dtype, keep=False).accuracy, "seconds": result["pass_seconds"],
            "precision": str(dtype or torch.float32).removeprefix("torch.")}


CONTESTANTS = {
    "peer": lambda train, test, seed, params: peer(train, test, seed),
    "cnnlab speedrun": cnnlab_speedrun,
    "peer, cnnlab's layout and precision": lambda train, test, seed, params: peer(train, test, seed, tuned=True),
}


def race(train: Data, test: Data, seeds: int, params: dict) -> dict:
    """Every contestant once unscored, then each seed for each contestant in turn."""
    runs = {name: [] for name in CONTESTANTS}
    for name, run in CONTESTANTS.items():
        run(train, test, 1000, params)  # warm-up: oneDNN builds its kernels on the first calls
    for seed in range(seeds):
        for name, run in CONTESTANTS.items():
            runs[name].append({"seed": seed, **run(train, test, seed, params)})
            print(f"{name} seed {seed}: {runs[name][-1]['accuracy']:.2%} in {runs[name][-1]['seconds']:.2f} s",
                  flush=True)
    summary = {name: {"mean_accuracy": statistics.mean(r["accuracy"] for r in rs),
                      "mean_seconds": statistics.mean(r["seconds"] for r in rs)} for name, rs in runs.items()}
    ours, theirs = summary["cnnlab speedrun"], summary["peer"]
    ratio = ours["mean_seconds"] / theirs["mean_seconds"]
    return {"runs": runs, "summary": summary, "time_ratio": ratio,
            "meets_targets": ours["mean_accuracy"] >= TARGET_ACCURACY and ratio <= TARGET_TIME_RATIO}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":  # kernels run asynchronously: wait for them before reading the clock
        torch.cuda.synchronize(device)


def markdown(results: dict) -> str:
    env, runs = results["env"], results["runs"]
    names = list(runs)
    lines = [f"# MNIST in one epoch: cnnlab speedrun against the fastest public recipe, "
             f"{env['device_name']}, {env['threads']} threads, torch {env['torch']}", "",
             f"Measured {results['date']} by `python benchmarks/speedrun.py` (seconds: the training pass over "
             f"{results['train_images']:,} images; accuracy: the {results['test_images']:,} test images; "
             f"cnnlab's precision: {runs['cnnlab speedrun'][0]['precision']}).", "",
             "| seed | " + " | ".join(f"{n}: accuracy | s" for n in names) + " |",
             "| ---: | " + " | ".join("---: | ---:" for _ in names) + " |"]
    for i in range(len(runs[names[0]])):
        lines.append(f"| {runs[names[0]][i]['seed']} | " + " | ".join(
            f"{runs[n][i]['accuracy']:.2%} | {runs[n][i]['seconds']:.2f}" for n in names) + " |")
    lines.append("| mean | " + " | ".join(f"**{results['summary'][n]['mean_accuracy']:.2%}** | "
                                          f"**{results['summary'][n]['mean_seconds']:.2f}**" for n in names) + " |")
    ours = results["summary"]["cnnlab speedrun"]
    lines += ["", f"cnnlab speedrun: {ours['mean_accuracy']:.2%} mean test accuracy in "
              f"{results['time_ratio']:.2f}x the peer's training time (targets: >= {TARGET_ACCURACY:.1%}, "
              f"<= {TARGET_TIME_RATIO}x): " + ("met." if results["meets_targets"] else "**not met**.")]
    return "\n".join(lines) + "\n"


def load_mnist(device: torch.device, verify: bool = True, train_images: int | None = None) -> tuple[Data, Data]:
    """MNIST's training and test images on `device`; the first `train_images` training ones when given."""
    with tempfile.TemporaryDirectory() as root:
        datasets.fetch("mnist", Path(root), mirror_from_env(), verify=verify)
        (images, labels), test = (datasets.load_split("mnist", Path(root), split) for split in ("train", "test"))
    images, labels = images[:train_images], labels[:train_images]
    return (images.to(device), labels.to(device)), tuple(t.to(device) for t in test)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for speedrun.json and speedrun.md")
    parser.add_argument("--device", default="cpu", help="cpu or cuda: where both contestants train")
    parser.add_argument("--train-images", type=int, default=None, help="only the first N training images")
    parser.add_argument("--no-verify", action="store_true", help="skip the MNIST checksums (generated test data)")
    args = parser.parse_args()
    device = torch.device(args.device)
    train, test = load_mnist(device, not args.no_verify, args.train_images)
    results = race(train, test, args.seeds, params_mod.load(REPO / "params.yaml"))
    results.update(date=datetime.date.today().isoformat(), env=environment(device, 0),
                   train_images=len(train[1]), test_images=len(test[1]))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "speedrun.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "speedrun.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    sys.exit(main())
