"""Every file the pipeline writes, in one place: the stages write them, the report and the benchmarks
read them. dvc.yaml must spell the same paths (DVC needs them literally); tests/test_dvc_yaml.py
checks that each stage's `outs` are exactly what this module says, and its `deps` exactly what it
reads and imports.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

# {model} is filled in for the stages generated per model (train@mlp, ...).
OUTPUTS: dict[str, dict[str, str]] = {
    "download": {"raw": "data/raw"},
    "prepare": {"prepared": "data/prepared"},
    "train": {
        "checkpoint": "models/{model}.pt",
        "metrics": "metrics/train/{model}.json",
        "history": "plots/train/{model}.csv",
        "steps": "plots/steps/{model}.csv",
        "watch": "plots/watch/{model}",     # <kind>/<epoch>.png and curves.csv: the model as it learned
    },
    "evaluate": {
        "metrics": "metrics/test/{model}.json",
        "per_class": "metrics/per_class/{model}.csv",
        "confusion": "plots/confusion/{model}.csv",
        "confusion_figure": "plots/evaluate/{model}_confusion.png",
    },
    "samples": {
        "figure": "plots/analysis/samples.png",
        "data": "metrics/data.json",
    },
    # every analysis (cnnlab/analyses/, one file each) writes into these: a new analysis
    # adds files inside the folders, never an output of its own
    "analyze": {
        "figures": "plots/analysis/{model}",    # <figure>.png, and folders of them (maps/, filters/)
        "tables": "plots/tables/{model}",       # <table>.csv
        "metrics": "metrics/analysis/{model}.json",
    },
    # What DVC shows (dvc.yaml's metrics and plots): the report gathers every model of `models:`,
    # and only those, into a few files, so a run never shows another run's leftovers.
    "report": {
        "markdown": "report/README.md",
        "curves": "report/curves.png",
        "report_figures": "report/figures",  # a figure of every model per table an analysis plots in the report
        "summary": "metrics/summary.csv",
        "scores": "metrics/scores.json",
        "model_scores": "metrics/models",
        "epochs": "plots/compare/epochs.csv",
        "steps": "plots/compare/steps.csv",
        "confusion": "plots/compare/confusion.csv",
        "tables": "plots/compare/tables",     # each plotted analysis table, every model in one file
        "figures": "plots/compare/figures",
        "watch_curves": "plots/compare/watch.csv",  # every model's curves.csv, with a model column
        "watch": "plots/compare/watch",       # every model's pictures: <model>_<kind>/<epoch>.png
    },
}

# Per-epoch snapshots of an unfinished fit, for resuming it (train.resume): not an output (a
# finished stage never depends on one, so a clone that pulled the results is up to date), outside
# git and the DVC cache, removed when the stage succeeds.
RESUME = ".cnnlab/resume/{model}.pt"

# Live per-epoch metrics of the model being trained (dvclive), for watching a run from outside; a log,
# not an output: the train stage's outputs appear only when it succeeds.
LIVE = "dvclive/{model}"

RAW = Path(OUTPUTS["download"]["raw"])
PREPARED = Path(OUTPUTS["prepare"]["prepared"])


def outputs(stage: str, model: str = "", root: str | Path = ".") -> SimpleNamespace:
    """The output paths of one stage (of one model's stage), under `root`."""
    return SimpleNamespace(**{role: Path(root) / template.format(model=model)
                              for role, template in OUTPUTS[stage].items()})
