"""What a stage produced, by output role, and where each role is written (cnnlab.config.paths):
a stage's core returns a `Result`; its stage script stages it with `write_result`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from cnnlab.config import paths
from cnnlab.plumbing.outputs import StagedOutputs, write_csv


@dataclass
class Result:
    """What a stage produced, by output role (the keys of cnnlab.config.paths.OUTPUTS[stage]).

    json: role -> a mapping written as JSON (NaN refused).
    tables: role -> rows (one CSV), or, for a folder role, name -> rows (one CSV each).
    figures: role -> a matplotlib figure, or, for a folder role, relative path -> figure.
    files: role -> a function that writes the file at the path it is given (a checkpoint).
    """
    json: dict[str, dict] = field(default_factory=dict)
    tables: dict[str, list[dict] | dict[str, list[dict]]] = field(default_factory=dict)
    figures: dict = field(default_factory=dict)
    files: dict[str, Callable[[Path], None]] = field(default_factory=dict)


def write_result(out: StagedOutputs, stage: str, result: Result, model: str = "", dpi: int = 110) -> None:
    """Stage every output of `result` where cnnlab.config.paths puts its role; a folder role is replaced whole."""
    target = vars(paths.outputs(stage, model))
    unknown = {*result.json, *result.tables, *result.figures, *result.files} - set(target)
    if unknown:
        raise KeyError(f"{stage}: no output role {sorted(unknown)} in cnnlab.config.paths.OUTPUTS")
    folders: dict[str, Path] = {}

    def folder(role: str) -> Path:
        if role not in folders:
            folders[role] = out.path(target[role])
            folders[role].mkdir(parents=True, exist_ok=True)
        return folders[role]

    for role, data in result.json.items():
        out.json(target[role], data)
    for role, rows in result.tables.items():
        if isinstance(rows, dict):
            for name, table in rows.items():
                write_csv(folder(role) / f"{name}.csv", table)
        else:
            out.csv(target[role], rows)
    for role, figure in result.figures.items():
        if isinstance(figure, dict):
            for relative, fig in figure.items():
                out.figure(folder(role) / relative, fig, dpi=dpi, staged=False)
        else:
            out.figure(target[role], figure, dpi=dpi)
    for role, write in result.files.items():
        write(out.path(target[role]))
