"""The original studies, rerun with cnnlab: each as one `dvc exp run --temp -f` (every stage rerun, so
the time is the whole experiment's) on real data, its test and
validation accuracy and its wall time written to benchmarks/results/studies.json (docs/studies.md's
table is generated from it by tools/docs_tables.py).

    python benchmarks/studies.py [NAME ...]     # default: every study in STUDIES

Studies too long for the machine at hand (the CIFAR-10 ones on a 2-core CPU) keep the entry of their
last run, with the date and commit it was measured at (studies whose entry has "recorded": true); one
measured on an offline copy of its data keeps that command as "measured_command", and its "command" is
the one a reader runs.
Run from the project root with the environment active and CNNLAB_DATA_MIRROR set when offline.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "studies.json"

# name: (the study, what it reported, the -S overrides of its setup, which model's numbers to show)
STUDIES = {
    "lenet-hooks": ("LeNet with forward hooks: every layer's maps and filters (MNIST)", "98.79% val",
                    ["models=[lenet]"], ["lenet"]),
    "mlp-vs-cnn": ("MLP vs CNN, 300 images per class, validation 0.2, early stopping (MNIST)",
                   "MLP 92.62%, CNN 96.01% test (its own code)",
                   ["models=[mlp,cnn]", "prepare.samples_per_class=300", "prepare.val_fraction=0.2",
                    "train.epochs=30", "train.patience=5"], ["mlp", "cnn"]),
    "sgd-cnn-fixed": ("small CNN, plain SGD lr 1e-3, batch 64, 60 epochs, softmax-before-loss bug removed (MNIST)",
                      "86.8% test (with the bug)",
                      ["models=[cnn_small]", "cnn_small.lr=0.001", "cnn_small.momentum=0.0",
                       "++cnn_small.batch_size=64"], ["cnn_small"]),
    "sgd-cnn-better": ("the same small CNN, cnnlab's recipe: SGD with momentum 0.9, lr 0.01, 60 epochs (MNIST)",
                       "86.8% test (the original recipe, with the bug)", ["models=[cnn_small]"], ["cnn_small"]),
    "alexnet": ("AlexNet, 1 channel, 100x100, 20k train / 1k validation, Adam, 4 epochs (MNIST)", "97.90% val",
                ["models=[alexnet]", "prepare.train_size=21000", "prepare.val_size=1000"], ["alexnet"]),
}


def command(overrides: list[str]) -> str:
    return "dvc exp run " + " ".join(f"-S '{o}'" if "[" in o else f"-S {o}" for o in overrides)


def run(name: str) -> dict:
    study, reported, overrides, shown = STUDIES[name]
    started = time.perf_counter()
    args = ["dvc", "exp", "run", "--temp", "-f", "-n", f"study-{name}"]
    for override in overrides:
        args += ["-S", override]
    subprocess.run(args, cwd=ROOT, check=True)
    seconds = time.perf_counter() - started
    shown_exps = json.loads(subprocess.run(["dvc", "exp", "show", "--json", "--all-commits"], cwd=ROOT, check=True,
                                           capture_output=True, text=True).stdout)
    data = next(exp["data"] for baseline in shown_exps for group in baseline.get("experiments") or []
                for exp in group["revs"] if exp.get("name") == f"study-{name}")
    metrics = data["metrics"]
    test = metrics["metrics/scores.json"]["data"]["test"]
    own = {m: metrics[f"metrics/models/{m}.json"]["data"] for m in shown}
    measured = ", ".join(f"{m} {own[m]['val_acc']:.2%} val, {test[m]:.2%} test" for m in shown)
    trained = ", ".join(f"{m} {own[m]['train_s']:.0f} s" for m in shown)
    return {"name": name, "study": study, "reported": reported, "cnnlab": measured,
            "time": f"training: {trained}; the whole experiment, every stage rerun: {seconds / 60:.1f} min",
            "command": command(overrides),
            "measured": str(date.today()), "recorded": False}


def main(names: list[str]) -> None:
    found = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"studies": []}
    entries = {s["name"]: s for s in found["studies"]}
    for name in names or list(STUDIES):
        entries[name] = run(name)
        write(entries)  # after each study: a long sweep interrupted keeps what it measured


def write(entries: dict) -> None:
    cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"], capture_output=True,
                         text=True).stdout.strip() or platform.processor()
    order = [*STUDIES, *(n for n in entries if n not in STUDIES)]
    found = {"measured_on": f"Measured with `python benchmarks/studies.py` on {cpu} ({os.cpu_count()} cores, CPU "
                            f"only, torch threads {os.environ.get('OMP_NUM_THREADS', 'default')}); entries marked "
                            f"recorded keep the numbers of their last run (see each entry's date).",
             "studies": [entries[n] for n in order if n in entries]}
    RESULTS.write_text(json.dumps(found, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main(sys.argv[1:])
