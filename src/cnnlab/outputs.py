"""All-or-nothing stage outputs.

A stage asks for a temporary path for each output, writes there, and only when the whole stage has
succeeded are the temporaries renamed over the real paths. A failing stage leaves no half-written
file and no mix of new and old outputs.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from cnnlab import CnnlabError


class StagedOutputs:
    def __init__(self) -> None:
        self._pending: list[tuple[Path, Path]] = []

    def path(self, target: str | Path) -> Path:
        """A temporary path beside `target` (same filesystem, so the final rename is atomic)."""
        target = Path(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.name}.tmp{os.getpid()}{target.suffix}")
        self._pending.append((temporary, target))
        return temporary

    def json(self, target: str | Path, data: dict) -> None:
        with open(self.path(target), "w") as stream:
            json.dump(data, stream, indent=2)
            stream.write("\n")

    def text(self, target: str | Path, text: str) -> None:
        self.path(target).write_text(text)

    def csv(self, target: str | Path, rows: list[dict], columns: list[str] | None = None) -> None:
        columns = columns or list(rows[0])
        with open(self.path(target), "w", newline="") as stream:
            writer = csv.DictWriter(stream, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)

    def figure(self, target: str | Path, fig, dpi: int = 110) -> None:
        import matplotlib.pyplot as plt
        fig.savefig(self.path(target), dpi=dpi, bbox_inches="tight", format=Path(target).suffix[1:])
        plt.close(fig)

    def commit(self) -> None:
        for temporary, target in self._pending:
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(temporary, target)
        self._pending.clear()

    def discard(self) -> None:
        for temporary, _ in self._pending:
            if temporary.is_dir():
                shutil.rmtree(temporary, ignore_errors=True)
            else:
                temporary.unlink(missing_ok=True)
        self._pending.clear()


@contextmanager
def staged_outputs() -> Iterator[StagedOutputs]:
    outputs = StagedOutputs()
    try:
        yield outputs
    except BaseException:
        outputs.discard()
        raise
    outputs.commit()


def run_stage(main) -> None:
    """Entry point of every stage script: user errors become one line on stderr and exit code 1."""
    try:
        main()
    except CnnlabError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
