"""CIFAR-10 on a CPU: params.yaml's `airbench:` recipe on the real CIFAR-10 training images, a
held-out test split carved from them, one fit per seed, timed.

    python benchmarks/cifar.py                       # 2 seeds: about 45 minutes on 2 CPU cores
    python benchmarks/cifar.py --seeds 1 --set airbench.epochs=4     # a quick look
    python benchmarks/cifar.py --folder /data/cifar10                # images already extracted

The images are the JPEG class folders of $CNNLAB_DATA_MIRROR/cifar10-jpeg-train.tar.gz (or
--folder), decoded and split by cnnlab's prepare exactly as `dvc exp run` with the command the
results name would (test 10% and validation 1,000 images, stratified, seed 0, the same split for
every seed). Each seed trains through cnnlab's train_model, the code the train stage runs, and is
scored on the test split by evaluate_model, the evaluate stage's code: with the recipe's test-time
views (`tta`), and with fewer for comparison. Time: the whole fit (train_seconds, its
per-epoch validation included), from the first batch to the last.
Results: benchmarks/results/cifar.json and cifar.md, or --name's (CPU model, threads, every epoch of every seed).
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import tarfile
import tempfile
from pathlib import Path

import torch
import yaml

from cnnlab.config import params as params_mod
from cnnlab.config.params import TTA
from cnnlab.datasets import formats as datasets
from cnnlab.datasets.files import mirror_from_env
from cnnlab.evaluate import evaluate_model
from cnnlab.prepare import prepare, save_prepared
from cnnlab.runtime import environment, pick_device
from cnnlab.train.main import train_model

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
ARCHIVE = "cifar10-jpeg-train.tar.gz"
TARGET_ACCURACY, TARGET_MINUTES = 0.90, 20.0
SPLIT = {"prepare.test_fraction": 0.1, "prepare.val_size": 1000}  # 44,000 train / 1,000 val / 5,000 test


def recipe_params(model: str, overrides: list[str]) -> dict:
    """params.yaml for a folder of CIFAR-10 images, the split above, `models: [model]`, and
    `key=value` overrides (values in YAML, as `dvc exp run -S` takes them), validated."""
    raw = params_mod.read_yaml((REPO / "params.yaml").read_text())
    settings = {"data.dataset": "folder", "data.path": "cifar10", "models": [model], **SPLIT}
    settings.update((key, yaml.safe_load(value)) for key, value in (o.split("=", 1) for o in overrides))
    for key, value in settings.items():
        section = raw
        *parents, last = key.split(".")
        for part in parents:
            section = section.setdefault(part, {})
        section[last] = value
    return params_mod.validate(raw)


def prepare_folder(folder: Path, params: dict, target: Path) -> dict:
    """The folder decoded and split as the download and prepare stages would; its info."""
    raw = target / "raw"
    datasets.fetch("folder", raw, None, True, str(folder))
    train, test, classes, val = datasets.decode_all("folder", raw, params["data"]["image_size"])
    splits = prepare(train, test, classes, params["prepare"], val)
    save_prepared(splits, target / "prepared")
    return splits["info"]


def one_seed(model: str, params: dict, seed: int, prepared: Path, work: Path) -> dict:
    params = {**params, "train": {**params["train"], "seed": seed, "progress": False}}
    params[model] = {k: v for k, v in params[model].items() if k not in ("seed", "progress")}
    result = train_model(model, params, prepared)
    metrics, history = result.json["metrics"], result.tables["history"]
    checkpoint = work / f"{model}-{seed}.pt"
    result.files["checkpoint"](checkpoint)
    saved = torch.load(checkpoint, weights_only=True)
    by_tta = {}
    for tta in TTA:
        torch.save({**saved, "tta": tta}, checkpoint)
        by_tta[tta] = evaluate_model(model, checkpoint, prepared, 500).json["metrics"]["accuracy"]
    elapsed, epochs = 0.0, []
    for record in history:
        elapsed += record["seconds"]
        epochs.append({"epoch": record["epoch"], "val_accuracy": record["val_accuracy"], "seconds": elapsed})
    row = {"seed": seed, "test_accuracy": by_tta[saved["tta"]], "test_accuracy_by_tta": by_tta,
           "train_seconds": metrics["train_seconds"], "images_per_second": metrics["images_per_second"],
           "precision": metrics["precision"], "epochs": epochs}
    print(f"{model} seed {seed}: {row['test_accuracy']:.2%} test in {row['train_seconds'] / 60:.1f} min", flush=True)
    return row


def run(model: str, params: dict, folder: Path, seeds: int) -> dict:
    with tempfile.TemporaryDirectory() as work:
        info = prepare_folder(folder, params, Path(work))
        runs = [one_seed(model, params, seed, Path(work) / "prepared", Path(work)) for seed in range(seeds)]
    accuracy = statistics.mean(r["test_accuracy"] for r in runs)
    minutes = statistics.mean(r["train_seconds"] for r in runs) / 60
    return {"model": model, "recipe": params_mod.describe_recipe(params, model), "sizes": info["sizes"],
            "runs": runs, "mean_test_accuracy": accuracy, "mean_minutes": minutes,
            "meets_targets": accuracy >= TARGET_ACCURACY and max(r["train_seconds"] for r in runs) / 60 <= TARGET_MINUTES}


def markdown(results: dict, command: str) -> str:
    env, runs, sizes = results["env"], results["runs"], results["sizes"]
    lines = [f"# CIFAR-10 on a CPU: {results['model']}, {env['device_name']}, {env['threads']} threads, "
             f"torch {env['torch']}", "",
             f"Measured {results['date']} by `{command}`: the real CIFAR-10 training JPEGs, "
             f"{sizes['train']:,} train / {sizes['val']:,} validation / {sizes['test']:,} held-out test "
             f"(stratified, seed 0), {runs[0]['precision']}. Minutes: the whole fit, validation included.", "",
             f"Recipe: {results['recipe']}", "",
             "| seed | test accuracy | " + " | ".join(f"tta {t}" for t in TTA) + " | minutes | images/s |",
             "| ---: | ---: | " + " | ".join("---:" for _ in TTA) + " | ---: | ---: |"]
    for r in runs:
        lines.append(f"| {r['seed']} | {r['test_accuracy']:.2%} | "
                     + " | ".join(f"{r['test_accuracy_by_tta'][t]:.2%}" for t in TTA)
                     + f" | {r['train_seconds'] / 60:.1f} | {r['images_per_second']:.0f} |")
    lines.append(f"| mean | **{results['mean_test_accuracy']:.2%}** | "
                 + " | ".join(f"{statistics.mean(r['test_accuracy_by_tta'][t] for r in runs):.2%}" for t in TTA)
                 + f" | **{results['mean_minutes']:.1f}** | |")
    lines += ["", "Validation accuracy (1,000 images) after each epoch, and the minutes since the first batch:", "",
              "| epoch | " + " | ".join(f"seed {r['seed']}: val | min" for r in runs) + " |",
              "| ---: | " + " | ".join("---: | ---:" for _ in runs) + " |"]
    for i in range(max(len(r["epochs"]) for r in runs)):
        cells = [f"{r['epochs'][i]['val_accuracy']:.2%} | {r['epochs'][i]['seconds'] / 60:.1f}"
                 if i < len(r["epochs"]) else " | " for r in runs]
        lines.append(f"| {i + 1} | " + " | ".join(cells) + " |")
    lines += ["", f"Targets: >= {TARGET_ACCURACY:.0%} mean test accuracy, every fit within {TARGET_MINUTES:.0f} "
              f"minutes: " + ("met." if results["meets_targets"] else "**not met**.")]
    return "\n".join(lines) + "\n"


def extracted(folder: Path | None, work: Path) -> Path:
    """--folder, or the mirror's archive unpacked under `work` (its train/<class>/ folders)."""
    if folder is not None:
        return folder
    mirror = mirror_from_env()
    if mirror is None or not (Path(mirror) / ARCHIVE).is_file():
        raise SystemExit(f"benchmarks/cifar.py: no {ARCHIVE} (set CNNLAB_DATA_MIRROR to the folder holding it, "
                         f"or pass --folder with the extracted class folders)")
    with tarfile.open(Path(mirror) / ARCHIVE) as archive:
        archive.extractall(work, filter="data")
    return work


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="airbench")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--folder", type=Path, default=None, help="CIFAR-10 class folders (default: the mirror's archive)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a params override, as -S")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for NAME.json and NAME.md")
    parser.add_argument("--name", default="cifar", help="the results' file name (one per CPU: cifar-amd, ...)")
    args = parser.parse_args()
    params = recipe_params(args.model, args.set)
    with tempfile.TemporaryDirectory() as work:
        results = run(args.model, params, extracted(args.folder, Path(work)), args.seeds)
    results.update(date=datetime.date.today().isoformat(), env=environment(pick_device("auto"), 0))
    command = "python benchmarks/cifar.py" + "".join(f" --set {s}" for s in args.set) + \
        (f" --seeds {args.seeds}" if args.seeds != 2 else "")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / f"{args.name}.md").write_text(markdown(results, command))
    print(markdown(results, command))


if __name__ == "__main__":
    sys.exit(main())
