"""Launching a stage's processes with PyTorch's own `torchrun`, for data-parallel training.

With `train.nproc: N > 1` the train stage runs itself again under
`torchrun --standalone --nproc_per_node=N` (or with the rendezvous in CNNLAB_TORCHRUN, for several
nodes) and waits. torchrun starts the processes, watches them and stops all of them when one fails;
what is added here is one readable line naming the rank that failed and why, instead of torchrun's
pages of tracebacks, and rank 0's outputs put in place only when every rank ended well. What each
process does while training is cnnlab.train.parallel's.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cnnlab import CnnlabError
from cnnlab.plumbing.outputs import StagedOutputs, remove_temporaries

LAUNCH_ENV = "CNNLAB_TORCHRUN"     # torchrun's arguments for several nodes, e.g. the rendezvous
LAUNCHER = "CNNLAB_LAUNCHER"  # set by torchrun.launch for its ranks: "<its pid>:<a folder it reads>"


def launcher() -> tuple[int, Path] | None:
    """When this process is a rank that torchrun.launch started: the launching stage's pid and
    the folder it reads (the ranks' one-line errors, rank 0's staged outputs)."""
    value = os.environ.get(LAUNCHER)
    if not value or "LOCAL_RANK" not in os.environ:
        return None
    pid, folder = value.split(":", 1)
    return int(pid), Path(folder)


def record_rank_failure(err: BaseException) -> None:
    """A failing torchrun rank leaves its error as one line for the process that launched it
    (torchrun.launch), which shows the cause instead of every rank's traceback."""
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


def under_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or "LOCAL_RANK" in os.environ


def needs_launch(nproc: int) -> bool:
    """Whether the stage should run itself again under torchrun (and is not already under it)."""
    return not under_torchrun() and (nproc > 1 or bool(os.environ.get(LAUNCH_ENV)))


def torchrun_command(nproc: int, argv: list[str]) -> list[str]:
    """torchrun (as `python -m torch.distributed.run`, the same program) for this stage: standalone
    on one node, or the user's multi-node arguments from CNNLAB_TORCHRUN."""
    nodes = shlex.split(os.environ.get(LAUNCH_ENV, "")) or ["--standalone"]
    return [sys.executable, "-m", "torch.distributed.run", *nodes, f"--nproc_per_node={nproc}", *argv]


def launch(nproc: int, argv: list[str], label: str) -> None:
    """Run `argv` (this stage) under torchrun and wait. The ranks' output is shown as it comes;
    torchrun's own report is kept back and, when a rank fails, replaced by one CnnlabError naming
    the rank and its error. Rank 0 hands its outputs over rather than renaming them: they are put
    in place here once every rank has exited cleanly, and removed if any failed (even after rank 0
    finished). Threads are split between the processes of a CPU node."""
    with tempfile.TemporaryDirectory(prefix="cnnlab-launch-") as folder:
        env = {**os.environ, LAUNCHER: f"{os.getpid()}:{folder}"}
        if "OMP_NUM_THREADS" not in env:  # torchrun would set 1 and warn about it
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
        try:
            with tempfile.TemporaryFile("w+") as report:
                code = subprocess.run(torchrun_command(nproc, argv), env=env, stderr=report).returncode
                if code == 0:
                    StagedOutputs.handed_over(Path(folder)).commit()
                    return
                report.seek(0)
                text = report.read()
        finally:
            remove_temporaries(os.getpid())  # after a failure: what rank 0 staged or half-wrote
        tail = text.strip().splitlines()[-1:] or ["no output"]
        raise CnnlabError(f"{label}: {_first_failure(Path(folder), text) or tail[0]} (torchrun exit code "
                          f"{code}; nothing was written)")


ROOT_CAUSE = re.compile(r"Root Cause.*?rank\s*:\s*(\d+).*?exitcode\s*:\s*(-?\d+).*?traceback\s*:\s*([^\n]*)",
                        re.S)


def _first_failure(folder: Path, report: str) -> str | None:
    """The cause: a rank's own error (bad data, a diverged fit) before anything else; then the rank
    torchrun saw fail first (killed, crashed: it left no line); then the earliest line left."""
    records = [json.loads(p.read_text()) for p in folder.glob("rank-*.json")]
    own = [r for r in records if r["user_error"]]
    if own:
        first = min(own, key=lambda r: r["time"])
        return f"rank {first['rank']} failed: {first['message']}"
    cause = ROOT_CAUSE.search(report)
    if cause:
        failed = int(cause.group(1))
        said = [r["message"] for r in records if r["rank"] == failed]
        why = said[0] if said else f"exit code {cause.group(2)} ({cause.group(3).strip()})"
        return f"rank {failed} failed: {why}"
    if records:
        first = min(records, key=lambda r: r["time"])
        return f"rank {first['rank']} failed: {first['message']}"
    return None
