"""Data-parallel training over several processes, launched by PyTorch's own `torchrun`.

With `train.nproc: N > 1` the train stage runs itself again under
`torchrun --standalone --nproc_per_node=N` (or with the rendezvous in CNNLAB_TORCHRUN, for several
nodes) and waits; each rank trains on its share of every global batch and DDP averages the gradients.
cnnlab manages no processes of its own: torchrun starts them, watches them and stops all of them
when one fails. What is added here is what a stage needs around that: who this process is, the
process group (NCCL on CUDA, gloo on a CPU), and one readable line naming the rank that failed
and why, instead of torchrun's pages of tracebacks from every process.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from cnnlab import CnnlabError
from cnnlab.core.outputs import StagedOutputs, remove_temporaries
from cnnlab.core.stage import LAUNCHER

LAUNCH_ENV = "CNNLAB_TORCHRUN"     # torchrun's arguments for several nodes, e.g. the rendezvous


def rank() -> int:
    return int(os.environ.get("RANK", 0))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", 1))


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


def init(device_type: str):
    """Join the process group torchrun set up; return this rank's device. NCCL between GPUs, gloo
    between CPU processes."""
    import datetime
    import torch
    import torch.distributed as dist
    if device_type == "cuda":
        local, gpus = int(os.environ.get("LOCAL_RANK", 0)), torch.cuda.device_count()
        if local >= gpus:  # NCCL takes one GPU per process: two ranks cannot share one
            raise CnnlabError(f"params.yaml: train.nproc asks for more processes on this node than its "
                              f"{gpus} GPU{'s' if gpus != 1 else ''}; set it to at most {gpus}")
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device(device_type)
    if not dist.is_initialized():
        # a peer that died is noticed by torchrun within seconds; the timeout only bounds a hang
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo",
                                 timeout=datetime.timedelta(minutes=10))
    return device


def finish() -> None:
    """Wait until every rank has finished training, then leave the process group (NCCL warns at
    exit about a group left open)."""
    import torch.distributed as dist
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
