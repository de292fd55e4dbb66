"""Looking inside a trained model, one analysis per file in this folder.

Each file defines `TITLE` and `run(subject, findings)`: it reads the model and its test images (the
`Subject`) and adds figures, tables, numbers and the text of its report section to the `Findings`.
Optionally `PLOTS`: which of its tables `dvc plots` draws, one line per model,
{table: {"x": column, "y": column, "title": text, "series": column (optional),
"report": True to also draw one figure of every model in the report}}.

They run, and the report shows them, in the order of ORDER, then any other file by name: adding an
analysis is adding a file (docs/extending.md); no stage, dvc.yaml or report edit.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

from cnnlab import models
from cnnlab.engine.batches import DeviceSplit
from cnnlab.results import Result

ORDER = ("feature_maps", "filters", "embedding", "gradcam", "mistakes", "explanations", "noise")


def modules() -> list[ModuleType]:
    """Every analysis, in report order."""
    found = sorted(m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)]) if not m.name.startswith("_"))
    ordered = [name for name in ORDER if name in found] + [name for name in found if name not in ORDER]
    return [importlib.import_module(f"{__name__}.{name}") for name in ordered]


@dataclass
class Subject:
    """A trained model and the test images it is looked at with."""
    name: str
    model: nn.Module
    spec: models.ModelSpec     # its declared head and attribution layer
    classes: list[str]
    test: DeviceSplit
    labels: torch.Tensor       # test labels, on the CPU
    options: dict              # params.yaml's analyze section
    dtype: torch.dtype | None  # the autocast it was trained with
    tta: str                   # the test-time views it predicts from (train.tta)
    samples: torch.Tensor      # a few test images per class, for the per-image figures
    row_labels: list[str]      # their classes' names

    @property
    def sample_images(self) -> torch.Tensor:
        return self.test.images.index_select(0, self.samples.to(self.test.images.device))


@dataclass
class Findings:
    """What the analyses found about one model: what the analyze stage writes and the report shows."""
    figures: dict = field(default_factory=dict)    # relative path -> matplotlib figure
    tables: dict = field(default_factory=dict)     # name -> list of rows
    metrics: dict = field(default_factory=dict)    # numbers, in metrics/analysis/<model>.json
    scores: dict = field(default_factory=dict)     # the few numbers `dvc exp show` compares across runs
    compared: dict = field(default_factory=dict)   # name -> figure path: compared across runs by dvc plots
    sections: list = field(default_factory=list)   # the report's sections, one per analysis

    def section(self, title: str) -> dict:
        self.sections.append({"title": title, "text": [], "figures": [], "links": [], "tables": []})
        return self.sections[-1]

    def result(self, plots: dict) -> Result:
        """By the analyze stage's output roles; the metrics carry what the report renders."""
        shown = {"plots": {name: plot for name, plot in plots.items() if name in self.tables},
                 "scores": self.scores, "compared": self.compared, "sections": self.sections}
        return Result(json={"metrics": {**self.metrics, **shown}}, tables={"tables": self.tables},
                      figures={"figures": self.figures})


def run_all(subject: Subject) -> Result:
    """Every analysis of `subject`, in report order."""
    findings, plots = Findings(), {}
    for module in modules():
        section = findings.section(module.TITLE)
        module.run(subject, findings, section)
        plots.update(getattr(module, "PLOTS", {}))
    return findings.result(plots)
