"""Data-parallel scaling: training images/s with 1 and 2 processes, and multi-GPU on paper.

    python benchmarks/scaling.py [--models mlp lenet] [--epochs 1]

Runs the real train stage (stages/train.py, so torchrun and DDP when train.nproc is 2) on the
prepared data of this checkout (data/prepared: run `dvc repro prepare` first) in a scratch copy,
once per model and process count, and reads images/s from its metrics. On a CPU node the processes
share its cores (OMP threads = cores / processes), so 2 processes on 2 cores check correctness;
they cannot be faster. On a GPU machine, train.nproc is the number of GPUs.

The paper part: DDP all-reduces every gradient each step, parameters x 4 bytes; a ring all-reduce
over N devices moves 2 (N - 1) / N times that through each link. Against the measured step time of
one process, that gives the communication time and the scaling efficiency with no overlap (DDP
overlaps it with the backward pass, so real efficiency is at least this) at NVLink (H100 NVLink 4,
450 GB/s per direction) and 100 Gb/s Ethernet (12.5 GB/s) bandwidths.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
LINKS = {"NVLink (450 GB/s)": 450e9, "100 Gb/s Ethernet (12.5 GB/s)": 12.5e9}
PAPER_MODELS = ("mlp", "lenet", "cnn", "resnet_small", "resnet18")


def train_once(model: str, nproc: int, epochs: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="cnnlab-scaling-") as scratch:
        project = Path(scratch)
        for name in ("stages", "dvc.yaml", "params.yaml"):
            (shutil.copytree if (ROOT / name).is_dir() else shutil.copy)(ROOT / name, project / name)
        (project / "data").mkdir()
        (project / "data" / "prepared").symlink_to(ROOT / "data" / "prepared")
        params = yaml.safe_load((project / "params.yaml").read_text())
        params["train"].update(nproc=nproc, epochs=epochs, progress=False, resume=False)
        (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        subprocess.run([sys.executable, "stages/train.py", model], cwd=project, env=env, check=True)
        return json.loads((project / "metrics" / "train" / f"{model}.json").read_text())


def parameter_counts() -> dict:
    import torch
    from cnnlab.engine.checkpoints import count_parameters
    from cnnlab.models import build
    shapes = {"resnet_small": (3, 10, 32), "resnet18": (3, 10, 32)}
    with torch.device("meta"):
        return {m: count_parameters(build(m, *shapes.get(m, (1, 10, 28)))) for m in PAPER_MODELS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mlp", "lenet"])
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from cnnlab.runtime import device_name, pick_device
    runs = {m: {n: train_once(m, n, args.epochs) for n in (1, 2)} for m in args.models}
    batch = yaml.safe_load((ROOT / "params.yaml").read_text())["train"]["batch_size"]
    counts = parameter_counts()
    device = pick_device("auto")
    lines = [f"# Data-parallel scaling, {device_name(device)} ({device.type}), {os.cpu_count()} cores", "",
             f"Training images/s of the train stage, {args.epochs} epoch(s) on the prepared data, batch {batch} "
             "(the global batch, split across processes):", "",
             "| model | 1 process | 2 processes (gloo) | 2 / 1 | train s, 1 | train s, 2 | val acc, 1 | val acc, 2 |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for m, by in runs.items():
        one, two = by[1], by[2]
        lines.append(f"| {m} | {one['images_per_second']:,.0f} | {two['images_per_second']:,.0f} | "
                     f"{two['images_per_second'] / one['images_per_second']:.2f} | {one['train_seconds']:.1f} | "
                     f"{two['train_seconds']:.1f} | {one['val_accuracy']:.4f} | {two['val_accuracy']:.4f} |")
    lines += ["", "On paper: gradient all-reduce per step (parameters x 4 bytes, ring: 2 (N-1)/N of it per link, "
              "N = 8) against one process's measured step time here; efficiency with no overlap "
              "= step / (step + all-reduce). A GPU's step is far shorter than this CPU's: the last column "
              "of each link is the step time at which the all-reduce alone would cost 10%.", "",
              "| model | parameters | MB per step | measured step, ms | " +
              " | ".join(f"all-reduce ms, {k} | efficiency, {k} | 90% needs a step of, ms" for k in LINKS) + " |",
              "| --- | ---: | ---: | ---: |" + " ---: | ---: | ---: |" * len(LINKS)]
    for m in PAPER_MODELS:
        volume = counts[m] * 4
        step = batch / runs[m][1]["images_per_second"] if m in runs else None
        cells = []
        for bandwidth in LINKS.values():
            comm = 2 * 7 / 8 * volume / bandwidth
            cells += [f"{comm * 1e3:.3f}", f"{step / (step + comm):.1%}" if step else "-", f"{9 * comm * 1e3:.2f}"]
        lines.append(f"| {m} | {counts[m]:,} | {volume / 1e6:.2f} | {step * 1e3:.1f} |" if step else
                     f"| {m} | {counts[m]:,} | {volume / 1e6:.2f} | - |")
        lines[-1] += " " + " | ".join(cells) + " |"
    text = "\n".join(lines) + "\n"
    out = ROOT / "benchmarks" / "results"
    (out / "scaling.md").write_text(text)
    (out / "scaling.json").write_text(json.dumps({m: {str(n): r for n, r in by.items()} for m, by in runs.items()},
                                                 indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    main()
