"""Device choice, seeding and the environment record written into metrics."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import random
from pathlib import Path
from typing import TYPE_CHECKING

from cnnlab import CnnlabError

if TYPE_CHECKING:  # imported where used: validating params and the report need no torch
    import torch


UNLIMITED = 2**60  # cgroup v1 writes "no limit" as a huge number (about 2**63, rounded to a page)


def own_cgroups(root: Path = Path("/")) -> list[tuple[Path, Path]]:
    """(the process's memory cgroup folder, its hierarchy's mount point) for cgroup v2 (the `0::` line
    of /proc/self/cgroup) and v1 (the `memory` controller's line), found under their mount points in
    /proc/self/mountinfo. `root` stands for / (tests pass a fake tree)."""
    try:
        lines = (root / "proc/self/cgroup").read_text().splitlines()
        mounts = (root / "proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    found = []
    for mount in mounts:
        fields = mount.split()
        if " - " not in mount or len(fields) < 5:
            continue
        fstype, _, options = mount.split(" - ", 1)[1].split()[:3]
        version = 2 if fstype == "cgroup2" else 1 if fstype == "cgroup" and "memory" in options.split(",") else 0
        for line in lines:
            _, controllers, path = line.split(":", 2)
            if (version == 2 and controllers == "") or (version == 1 and "memory" in controllers.split(",")):
                if path.startswith(fields[3]):  # a container's mount starts at its own cgroup
                    path = path[len(fields[3]):]
                top = root / fields[4].lstrip("/")
                found.append((top / path.lstrip("/"), top))
    return found


def _cgroup_folders(root: Path) -> list[Path]:
    """Every memory cgroup folder whose limit applies to this process: its own, then each parent up
    to the mount point."""
    folders = []
    for own, top in own_cgroups(root):
        folders += [own] + [parent for parent in own.parents if top in parent.parents or parent == top]
    return folders


def _read_number(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # v2 writes "max" for no limit


def _reclaimable(folder: Path) -> int:
    """Page cache the kernel can drop rather than fail an allocation (inactive file pages)."""
    try:
        stat = dict(line.split() for line in (folder / "memory.stat").read_text().splitlines() if line.count(" ") == 1)
    except (OSError, ValueError):
        return 0
    return int(stat.get("inactive_file", stat.get("total_inactive_file", 0)))


def cgroup_headroom(root: Path = Path("/")) -> int | None:
    """Bytes this process may still allocate under the memory limits of its cgroup and the cgroups
    above it (v2 memory.max less memory.current, v1 memory.limit_in_bytes less
    memory.usage_in_bytes, less droppable page cache in both), or None when none sets a limit."""
    headroom = None
    for folder in _cgroup_folders(root):
        for limit_file, usage_file in (("memory.max", "memory.current"),
                                       ("memory.limit_in_bytes", "memory.usage_in_bytes")):
            limit, usage = _read_number(folder / limit_file), _read_number(folder / usage_file)
            if limit is None or usage is None or limit >= UNLIMITED:
                continue
            left = max(0, limit - max(0, usage - _reclaimable(folder)))
            headroom = left if headroom is None else min(headroom, left)
    return headroom


def address_space_room() -> int | None:
    """Bytes this process may still map under its address-space limit (`ulimit -v`, `prlimit --as`),
    or None when it has none."""
    try:
        import resource
    except ImportError:  # Windows has no rlimits
        return None
    import psutil
    limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    return None if limit == resource.RLIM_INFINITY else limit - psutil.Process().memory_info().vms


def available_bytes(device=None) -> int:
    """Memory free for new tensors: the GPU's on CUDA; otherwise the machine's, or less where the
    process's cgroup (a container's or a job scheduler's memory limit) or its address-space limit
    allows less."""
    if device is not None and device.type == "cuda":
        import torch
        return torch.cuda.mem_get_info(device)[0]
    import psutil
    limits = (psutil.virtual_memory().available, cgroup_headroom(), address_space_room())
    return min(limit for limit in limits if limit is not None)


def check_memory(needed: int, what: str, device=None, fix: str = "use smaller sizes") -> None:
    """One clear line, instead of an allocation failure deep inside torch (or the kernel killing the
    process at its cgroup's memory limit), when `needed` bytes cannot fit."""
    free = available_bytes(device)
    where = (f"on {device}" if device is not None and device.type == "cuda" else
             "to this process (the machine's, or its cgroup's or address-space limit)")
    if needed > free:
        raise CnnlabError(f"{what} needs {needed / 2**30:,.2f} GiB but only {free / 2**30:,.2f} GiB is free {where}; {fix}")


def pick_device(name: str = "auto") -> "torch.device":
    import torch
    cuda = torch.cuda.is_available()
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if (name == "cuda" and not cuda) or (name == "mps" and not mps):
        raise CnnlabError(f"params.yaml: train.device is '{name}' but no {name} device is available "
                          f"(use auto or cpu)")
    return torch.device(name)


def seed_everything(seed: int, deterministic_kernels: bool = True) -> "torch.Generator":
    """Seed every RNG a run touches; return a CPU generator for the shuffling order.

    deterministic_kernels: ask torch for deterministic kernels (torch.use_deterministic_algorithms).
    Same params and seed must give the same metrics; the kernels that differ from run to run are
    GPU kernels (atomics in cuDNN, cuBLAS, scatter) and torch.compile's, so the train stage asks
    on CUDA and under train.compile. The call also loads torch.compile's configuration, a
    noticeable part of a small CPU stage's start-up (benchmarks/results/pipeline.md)."""
    import numpy as np
    import torch
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic_kernels:
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    return torch.Generator().manual_seed(seed)


def device_name(device: "torch.device") -> str:
    if device.type == "cuda":
        import torch
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return f"{cpu_name()} GPU (mps)"  # Apple's chips name the GPU and the CPU together
    return cpu_name()


def cpu_name() -> str:
    try:  # platform.processor() is often empty on Linux; /proc/cpuinfo names the CPU
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if platform.system() == "Darwin":  # platform.processor() says only "arm" or "i386"
        import subprocess
        try:
            return subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                                  check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            pass
    return platform.processor() or platform.machine()


def environment(device: "torch.device", seed: int) -> dict:
    import torch
    return {
        "device": device.type,
        "device_name": device_name(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torchvision": importlib.metadata.version("torchvision"),
        "python": platform.python_version(),
        "seed": seed,
    }
