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
        # per-epoch snapshots for resuming an interrupted run: kept across runs (persist: true in
        # dvc.yaml), outside git and the DVC cache
        "resume": "models/{model}.resume.pt",
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
    "analyze": {
        "figures": "plots/analysis/{model}",
        "tsne": "plots/analysis/tsne/{model}.csv",
        "noise": "plots/analysis/noise/{model}.csv",
        "layers": "plots/analysis/layers/{model}.csv",
        "mistakes": "plots/analysis/mistakes/{model}.csv",
        "metrics": "metrics/analysis/{model}.json",
    },
    # What DVC shows (dvc.yaml's metrics and plots): the report gathers every model of `models:`,
    # and only those, into a few files, so a run never shows another run's leftovers.
    "report": {
        "markdown": "report/README.md",
        "curves": "report/curves.png",
        "noise": "report/noise.png",
        "summary": "metrics/summary.csv",
        "scores": "metrics/scores.json",
        "model_scores": "metrics/models",
        "epochs": "plots/compare/epochs.csv",
        "steps": "plots/compare/steps.csv",
        "noise_curves": "plots/compare/noise.csv",
        "confusion": "plots/compare/confusion.csv",
        "figures": "plots/compare/figures",
    },
}

# Live per-epoch metrics of the model being trained (dvclive), for watching a run from outside; a log,
# not an output: the train stage's outputs appear only when it succeeds.
LIVE = "dvclive/{model}"

RAW = Path(OUTPUTS["download"]["raw"])
PREPARED = Path(OUTPUTS["prepare"]["prepared"])


def outputs(stage: str, model: str = "", root: str | Path = ".") -> SimpleNamespace:
    """The output paths of one stage (of one model's stage), under `root`."""
    return SimpleNamespace(**{role: Path(root) / template.format(model=model)
                              for role, template in OUTPUTS[stage].items()})
