"""Training throughput on real MNIST: the bare model step, cnnlab's training loop, the notebook recipe.

    python benchmarks/throughput.py                  # mlp, cnn, lenet: about 8 minutes on 2 CPU cores
    python benchmarks/throughput.py --models lenet --rounds 1 --no-time-to-accuracy   # a quick look

For each model, on the same machine and in one process:
  bare      the training step alone on pre-made normalised tensors: no data handling at all (the ceiling),
            once as the textbook network with PyTorch's defaults and once as cnnlab runs it (pool
            before ReLU, channels_last for conv nets, fused Adam): the ceiling before and after tuning,
  cnnlab    one epoch of cnnlab's own `train_model`, the code the train stage runs (data path, metrics,
            progress bar, history, validation), timed from the first batch to the end of validation,
  notebook  the usual notebook recipe: torchvision MNIST with ToTensor()+Normalize() per sample,
            DataLoader(batch_size=128, shuffle=True, num_workers=2), a plain loop, same model and
            optimizer (Adam, PyTorch's defaults, as a notebook writes it).
This machine is a shared VM whose speed drifts by tens of percent from minute to minute, so bare
and cnnlab are measured in alternating rounds (ABBA order): the rates are medians over rounds and cnnlab/bare is
the median of the per-round ratios.
Then, as separate processes: the train stage's whole wall time for one epoch (start-up and data
loading included), and time to accuracy (the train stage with the shipped params.yaml, then the test
accuracy the evaluate stage measures).

Results go to benchmarks/results/throughput.json and throughput.md. Needs the MNIST files: set
CNNLAB_DATA_MIRROR (see the README) or have network access.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

from cnnlab import CnnlabError
from cnnlab.config import params as params_mod
from cnnlab.datasets import formats as datasets
from cnnlab.datasets.files import mirror_from_env
from cnnlab.models.blocks import textbook_order
from cnnlab.models import build
from cnnlab.prepare import load_prepared, prepare, save_prepared
from cnnlab.runtime import environment, pick_device, seed_everything
from cnnlab.engine.inference import uses_channels_last
from cnnlab.train.main import train_model

REPO = Path(__file__).resolve().parents[1]
BATCH = 128


def make_project(workdir: Path, mirror: Path | None) -> Path:
    """A scratch project: the repo's params.yaml and real MNIST prepared as the pipeline does it."""
    project = workdir / "project"
    project.mkdir()
    shutil.copy(REPO / "params.yaml", project / "params.yaml")
    params = params_mod.load(project / "params.yaml")
    raw_root = project / "data" / "raw"
    datasets.fetch("mnist", raw_root, mirror, verify=True)
    train, test, classes, _ = datasets.decode_all("mnist", raw_root)
    splits = prepare(train, test, classes, params["prepare"])
    save_prepared(splits, project / "data" / "prepared")
    return project


def bare_rate(name: str, images: torch.Tensor, labels: torch.Tensor, lr: float, tuned: bool) -> float:
    """Images/s of forward+backward+step over pre-made float tensors, in order, nothing else.

    Untuned is the textbook network (conv -> ReLU -> pool) with PyTorch's defaults (contiguous
    tensors, foreach Adam); tuned is cnnlab's (pool before ReLU, channels_last for conv nets, fused Adam).
    """
    seed_everything(0)
    model = build(name, 1, 10, 28)
    if not tuned:
        model = textbook_order(model)
    if tuned and uses_channels_last(model):
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr, fused=True if tuned else None)
    model.train()
    batches = [(images[i:i + BATCH], labels[i:i + BATCH]) for i in range(0, len(labels), BATCH)]

    def step(x, y):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for x, y in batches[:10]:  # warm-up: oneDNN builds its kernels on the first calls
        step(x, y)
    start = time.perf_counter()
    for x, y in batches:
        step(x, y)
    return len(labels) / (time.perf_counter() - start)


def cnnlab_rate(name: str, params: dict, prepared: Path) -> dict:
    """One epoch of the train stage's own code, in-process."""
    params = copy.deepcopy(params)
    one_epoch(params, name)
    metrics = train_model(name, params, prepared).json["metrics"]
    return {"images_per_second": metrics["train_images"] / metrics["train_seconds"],
            "training_passes_per_second": metrics["images_per_second"]}


def notebook_rate(name: str, raw_root: Path, lr: float) -> float:
    """The notebook recipe, one full epoch of the 60k training images, loader start-up included."""
    from torch.utils.data import DataLoader
    from torchvision import datasets as tv_datasets, transforms

    seed_everything(0)
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    train_set = tv_datasets.MNIST(str(raw_root), train=True, transform=transform, download=False)
    loader = DataLoader(train_set, batch_size=BATCH, shuffle=True, num_workers=2)
    model = build(name, 1, 10, 28)
    optimizer = torch.optim.Adam(model.parameters(), lr)
    model.train()
    start = time.perf_counter()
    for x, y in loader:
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
    return len(train_set) / (time.perf_counter() - start)


def run_stage(project: Path, *args: str) -> float:
    """Wall seconds of one stage script as its own process, as `dvc repro` runs it."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, str(REPO / "stages" / args[0]), *args[1:]], cwd=project,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise CnnlabError(f"stages/{args[0]} failed: {done.stderr.strip().splitlines()[-1]}")
    return seconds


def one_epoch(raw: dict, name: str) -> None:
    raw["train"]["epochs"] = 1
    raw[name] = {**(raw.get(name) or {}), "epochs": 1}


def with_params(project: Path, edit) -> None:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    edit(raw)
    (project / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


def markdown(results: dict) -> str:
    env = results["env"]
    lines = [
        f"Measured on {env['device_name']} ({env['threads']} threads, {env['device']}), torch {env['torch']}, "
        f"{results['date']}; medians of {results['rounds']} alternating rounds. Images/s of training, batch {BATCH}.",
        "",
        "| model | bare, textbook + defaults | bare, tuned | cnnlab | notebook | cnnlab / bare (tuned) "
        "| cnnlab / notebook | train stage, 1 epoch, wall s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in results["models"].items():
        lines.append(
            f"| {name} | {r['bare_default']:,.0f} | {r['bare_tuned']:,.0f} | {r['cnnlab']:,.0f} | "
            f"{r['notebook']:,.0f} | {r['cnnlab_over_bare']:.2f} | {r['cnnlab_over_notebook']:.1f} | "
            f"{r['stage_one_epoch_seconds']:.1f} |")
    if results.get("time_to_accuracy"):
        lines += ["", "| model | epochs (shipped params) | train stage wall s | test accuracy |",
                  "| --- | --- | --- | --- |"]
        for name, r in results["time_to_accuracy"].items():
            lines.append(f"| {name} | {r['epochs_run']} | {r['train_stage_seconds']:.1f} | {r['test_accuracy']:.2%} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["mlp", "cnn", "lenet"])
    parser.add_argument("--rounds", type=int, default=5, help="alternating bare/cnnlab rounds (median kept)")
    parser.add_argument("--tta-models", nargs="*", default=["mlp", "lenet"],
                        help="models for time to accuracy (full training with the shipped params)")
    parser.add_argument("--no-time-to-accuracy", action="store_true")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()

    mirror = mirror_from_env()
    with tempfile.TemporaryDirectory() as tmp:
        project = make_project(Path(tmp), mirror)
        prepared, raw_root = project / "data" / "prepared", project / "data" / "raw"
        params = params_mod.load(project / "params.yaml")
        data = load_prepared(prepared, ("train",))
        info = data["info"]
        images_u8, labels = data["train"]
        # the bare loop's input, made once: normalised float images, as a model sees them
        std, mean = torch.tensor(info["std"]).view(1, -1, 1, 1), torch.tensor(info["mean"]).view(1, -1, 1, 1)
        images = (images_u8.float() / 255 - mean) / std

        results = {"date": time.strftime("%Y-%m-%d"), "rounds": args.rounds,
                   "env": environment(pick_device(params["train"]["device"]), 0), "models": {}}
        for name in args.models:
            lr = params_mod.train_config(params, name)["lr"]
            runs = {"bare_default": [], "bare_tuned": [], "cnnlab": [], "cnnlab_passes": []}
            for round_ in range(args.rounds):
                runs["bare_default"].append(bare_rate(name, images, labels, lr, tuned=False))
                # ABBA order: the machine's drift within a round falls on both sides alike
                if round_ % 2 == 0:
                    runs["bare_tuned"].append(bare_rate(name, images, labels, lr, tuned=True))
                cnnlab = cnnlab_rate(name, params, prepared)
                if round_ % 2 == 1:
                    runs["bare_tuned"].append(bare_rate(name, images, labels, lr, tuned=True))
                runs["cnnlab"].append(cnnlab["images_per_second"])
                runs["cnnlab_passes"].append(cnnlab["training_passes_per_second"])
                print(f"{name} round {round_ + 1}: " + ", ".join(f"{k} {v[-1]:,.0f}" for k, v in runs.items()),
                      file=sys.stderr, flush=True)
            row = {k: statistics.median(v) for k, v in runs.items()}
            row["runs"] = runs
            row["notebook"] = notebook_rate(name, raw_root, lr)
            # a ratio within each round cancels the machine's drift between rounds
            row["cnnlab_over_bare"] = statistics.median(c / b for c, b in zip(runs["cnnlab"], runs["bare_tuned"]))
            row["cnnlab_over_notebook"] = row["cnnlab"] / row["notebook"]
            with_params(project, lambda raw: one_epoch(raw, name))
            row["stage_one_epoch_seconds"] = run_stage(project, "train.py", name)
            results["models"][name] = row
            print(f"{name}: notebook {row['notebook']:,.0f}, stage 1 epoch {row['stage_one_epoch_seconds']:.1f} s",
                  file=sys.stderr, flush=True)

        results["time_to_accuracy"] = {}
        if not args.no_time_to_accuracy:
            with_params(project, lambda raw: None)  # the shipped params
            for name in args.tta_models:
                seconds = run_stage(project, "train.py", name)
                run_stage(project, "evaluate.py", name)
                train = json.loads((project / "metrics" / "train" / f"{name}.json").read_text())
                test = json.loads((project / "metrics" / "test" / f"{name}.json").read_text())
                results["time_to_accuracy"][name] = {
                    "train_stage_seconds": seconds, "epochs_run": train["epochs_run"],
                    "train_seconds": train["train_seconds"], "test_accuracy": test["accuracy"]}
                print(f"{name}: {test['accuracy']:.4f} test accuracy after {seconds:.1f} s of train stage",
                      file=sys.stderr, flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "throughput.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "throughput.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    try:
        main()
    except CnnlabError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
