"""All-or-nothing stage outputs.

A stage asks for a temporary path for each output, writes there, and only when the whole stage has
succeeded are the temporaries renamed over the real paths. A failing stage leaves no half-written
file and no mix of new and old outputs.

A temporary keeps its target's own file name, inside a hidden folder beside the target: formats that
record their file name (torch.save names the zip's root folder after it) then write the same bytes
as a direct save would, so the same training gives a byte-identical checkpoint.

Under torchrun, rank 0 cannot know that the other ranks will also end well, so it does not rename:
it hands its staged outputs over to the stage process that launched torchrun, which renames them
only once every rank has exited cleanly, and removes them otherwise.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from cnnlab import PHASE_SECONDS, CnnlabError, timed

TEMPORARY_PREFIX = ".cnnlab-tmp-"
LAUNCHER = "CNNLAB_LAUNCHER"  # set by distributed.launch for its ranks: "<its pid>:<a folder it reads>"
HANDED_OVER = "staged.json"    # in that folder: rank 0's staged outputs, for the launcher to commit


def launcher() -> tuple[int, Path] | None:
    """When this process is a rank that distributed.launch started: the launching stage's pid and
    the folder it reads (the ranks' one-line errors, rank 0's staged outputs)."""
    value = os.environ.get(LAUNCHER)
    if not value or "LOCAL_RANK" not in os.environ:
        return None
    pid, folder = value.split(":", 1)
    return int(pid), Path(folder)


def _temporary(target: Path, owner: int) -> Path:
    """Where `target` is written first: its own name, in its owner's hidden folder beside it. The
    owner is a live process's pid, so a later stage's sweep leaves the folder alone."""
    holder = target.parent / f"{TEMPORARY_PREFIX}{owner}"
    holder.mkdir(parents=True, exist_ok=True)
    return holder / target.name


class StagedOutputs:
    def __init__(self, owner: int | None = None) -> None:
        self._owner = owner or os.getpid()
        self._pending: list[tuple[Path, Path]] = []

    def path(self, target: str | Path) -> Path:
        """A temporary path for `target` (same filesystem, so the final rename is atomic)."""
        target = Path(target)
        temporary = _temporary(target, self._owner)
        self._pending.append((temporary, target))
        return temporary

    def json(self, target: str | Path, data: dict, staged: bool = True) -> None:
        """staged=False writes straight to `target`, inside a folder that is itself a staged output."""
        with open(self.path(target) if staged else target, "w") as stream:
            json.dump(data, stream, indent=2, allow_nan=False)  # NaN/inf are not JSON: fail, never write them
            stream.write("\n")

    def text(self, target: str | Path, text: str) -> None:
        self.path(target).write_text(text)

    def csv(self, target: str | Path, rows: list[dict], columns: list[str] | None = None) -> None:
        columns = columns or list(rows[0])
        with open(self.path(target), "w", newline="") as stream:
            writer = csv.DictWriter(stream, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)

    def figure(self, target: str | Path, fig, dpi: int = 110, staged: bool = True) -> None:
        """Save a matplotlib figure; staged=False writes straight to `target`, a path inside a folder
        that is itself a staged output."""
        import matplotlib.pyplot as plt
        path = self.path(target) if staged else Path(target)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi, bbox_inches="tight", format=Path(target).suffix[1:])
        plt.close(fig)

    def commit(self) -> None:
        for temporary, _ in self._pending:
            _fsync(temporary)  # on disk before the rename makes it the output: a crash leaves old or new
        for temporary, target in self._pending:
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(temporary, target)
        for holder in {temporary.parent for temporary, _ in self._pending}:
            shutil.rmtree(holder, ignore_errors=True)
        self._pending.clear()

    def discard(self) -> None:
        for holder in {temporary.parent for temporary, _ in self._pending}:
            shutil.rmtree(holder, ignore_errors=True)
        self._pending.clear()

    def hand_over(self, folder: Path) -> None:
        """Leave the staged outputs for the launching process to commit (which syncs them first) or
        discard. It reads the list only once every rank has exited cleanly, so never half-written."""
        pairs = [[str(temporary.resolve()), str(target.resolve())] for temporary, target in self._pending]
        (folder / HANDED_OVER).write_text(json.dumps(pairs))
        self._pending.clear()

    @classmethod
    def handed_over(cls, folder: Path) -> "StagedOutputs":
        """What a rank handed over in `folder` (nothing, if it never got that far)."""
        staged = cls()
        manifest = folder / HANDED_OVER
        if manifest.exists():
            staged._pending = [(Path(temporary), Path(target)) for temporary, target in json.loads(manifest.read_text())]
        return staged


def _fsync(path: Path) -> None:
    for file in ([path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]):
        with open(file, "rb") as stream:
            os.fsync(stream.fileno())


def write_atomically(target: str | Path, write) -> None:
    """write(path) to a temporary beside `target`, synced, then renamed over it in one step."""
    temporary = _temporary(Path(target), os.getpid())
    try:
        write(temporary)
        _fsync(temporary)
        os.replace(temporary, target)
    finally:
        shutil.rmtree(temporary.parent, ignore_errors=True)


OUTPUT_FOLDERS = ("data", "models", "metrics", "plots", "report")


def _holders(folders, owner: str = "*") -> list[Path]:
    """The temporaries' folders of `owner` (a pid; "*": every owner) under the output folders."""
    return [holder for folder in map(Path, folders) if folder.is_dir()
            for holder in folder.rglob(f"{TEMPORARY_PREFIX}{owner}")]


def sweep_temporaries(folders=OUTPUT_FOLDERS) -> int:
    """Remove the temporaries of stage processes that were killed (their pid is gone); return how many."""
    swept = 0
    for holder in _holders(folders):
        try:
            os.kill(int(holder.name.removeprefix(TEMPORARY_PREFIX)), 0)
            continue  # that process still runs (a parallel stage)
        except (ValueError, ProcessLookupError):
            pass
        except PermissionError:
            continue
        shutil.rmtree(holder, ignore_errors=True)
        swept += 1
    return swept


def remove_temporaries(owner: int, folders=OUTPUT_FOLDERS) -> None:
    """Remove what was staged for `owner` (a launcher whose ranks failed): handed over or half-written."""
    for holder in _holders(folders, str(owner)):
        shutil.rmtree(holder, ignore_errors=True)


@contextmanager
def staged_outputs() -> Iterator[StagedOutputs]:
    lead = launcher()
    outputs = StagedOutputs(lead[0] if lead else None)
    with timed("write"):
        try:
            yield outputs
        except BaseException:
            outputs.discard()
            raise
        if lead:  # a rank under distributed.launch: it commits once every rank has ended well
            outputs.hand_over(lead[1])
        else:
            outputs.commit()


def model_argument(stage: str) -> str:
    """The model named on a per-model stage's command line (`python stages/train.py lenet`)."""
    from cnnlab.models import MODELS
    if len(sys.argv) != 2 or sys.argv[1] not in MODELS:
        raise CnnlabError(f"usage: {stage}.py MODEL, MODEL one of {', '.join(MODELS)}")
    return sys.argv[1]


def _seconds_since_start() -> float | None:
    """How long ago the kernel started this process (interpreter start-up and imports included)."""
    try:
        with open("/proc/self/stat") as stat, open("/proc/uptime") as uptime:
            started_ticks = int(stat.read().rsplit(")", 1)[1].split()[19])  # field 22: starttime
            return float(uptime.read().split()[0]) - started_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None  # not Linux: start-up is left out of the record


def _record_timings(main_started: float) -> None:
    """With CNNLAB_TIMINGS set (benchmarks/pipeline.py sets it), append one JSON line of where this
    stage's time went: start-up (process start to main), load, fit, write, and the rest."""
    target = os.environ.get("CNNLAB_TIMINGS")
    if not target:
        return
    main_seconds = time.perf_counter() - main_started
    since_start = _seconds_since_start()
    record = {"stage": Path(sys.argv[0]).stem + (f"@{sys.argv[1]}" if len(sys.argv) > 1 else ""),
              "startup": None if since_start is None else round(since_start - main_seconds, 3),
              **{phase: round(seconds, 3) for phase, seconds in PHASE_SECONDS.items()},
              "main": round(main_seconds, 3)}
    with open(target, "a") as stream:
        stream.write(json.dumps(record) + "\n")


def _record_rank_failure(err: BaseException) -> None:
    """A failing torchrun rank leaves its error as one line for the process that launched it
    (distributed.launch), which shows the cause instead of every rank's traceback."""
    lead = launcher()
    if lead is None:
        return
    user_error = isinstance(err, CnnlabError)
    text = str(err).strip().splitlines()
    message = str(err) if user_error else f"{type(err).__name__}: {text[0] if text else ''}"
    rank = int(os.environ.get("RANK", 0))
    try:
        Path(lead[1], f"rank-{rank}.json").write_text(json.dumps(
            {"rank": rank, "time": time.time(), "user_error": user_error, "message": message}))
    except OSError:
        pass  # the launcher is on another node: torchrun's own report stands


def _interrupted(signum, frame):
    raise KeyboardInterrupt  # SIGTERM (dvc, a scheduler) cleans up exactly as Ctrl-C does


def _end_with_parent() -> None:
    """Ask Linux to send this process SIGTERM when its parent dies: `dvc repro` killed with SIGTERM
    exits at once without stopping the stage it runs, which would then finish and write outputs
    that no dvc.lock records."""
    try:
        import ctypes
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: nothing to ask for
        pass
    if os.getppid() == 1:  # the parent died before we asked
        raise KeyboardInterrupt


def run_stage(main, sweep: bool = True) -> None:
    """Entry point of every stage script (and of `python -m cnnlab.predict`, which sweeps nothing):
    user errors become one line on stderr and exit code 1."""
    signal.signal(signal.SIGTERM, _interrupted)
    started = time.perf_counter()
    try:
        _end_with_parent()
        if sweep:
            sweep_temporaries()
        main()
        _record_timings(started)
    except CnnlabError as err:
        _record_rank_failure(err)
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as err:  # a bug, or a peer rank gone: the traceback stays, and the launcher gets a line
        _record_rank_failure(err)
        raise
