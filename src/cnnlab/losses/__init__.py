"""The losses a model can be trained with, one module each in this folder, chosen by `train.loss`.

Each module defines `loss(logits, labels, label_smoothing=0.0, reduction="mean")`: training calls it with
the recipe's label smoothing, validation with none and reduction="sum". To add one, add a file here
(docs/extending.md walks through focal loss) and train with `-S train.loss=<its name>`."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import Callable


def names() -> tuple[str, ...]:
    """Every loss: the modules of this folder (listed, not imported)."""
    return tuple(sorted(m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)])
                        if not m.name.startswith("_")))


def function(name: str) -> Callable:
    return importlib.import_module(f"{__name__}.{name}").loss
