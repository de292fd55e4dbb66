"""Device choice, seeding and the environment record written into metrics."""

from __future__ import annotations

import os
import platform
import random
from pathlib import Path
from typing import TYPE_CHECKING

from cnnlab import CnnlabError

if TYPE_CHECKING:  # imported where used: validating params and the report need no torch
    import torch


def available_bytes(device=None) -> int:
    """Memory free for new tensors: the GPU's on CUDA, the machine's otherwise."""
    if device is not None and device.type == "cuda":
        import torch
        return torch.cuda.mem_get_info(device)[0]
    import psutil
    return psutil.virtual_memory().available


def check_memory(needed: int, what: str, device=None) -> None:
    """One clear line, instead of an allocation failure deep inside torch, when `needed` bytes
    cannot fit."""
    free = available_bytes(device)
    if needed > free:
        raise CnnlabError(f"{what} needs {needed / 2**30:,.1f} GiB but only {free / 2**30:,.1f} GiB is free"
                          f"{' on ' + str(device) if device is not None else ''}; use smaller sizes")


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


def seed_everything(seed: int) -> "torch.Generator":
    """Seed every RNG a run touches; return a CPU generator for the shuffling order."""
    import numpy as np
    import torch
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    # Same params and seed must give the same metrics; on CUDA this costs a little speed. The public
    # torch.use_deterministic_algorithms also imports torch._inductor to set its flag (1.3 s of a
    # stage's start-up); the flag only matters to torch.compile, which sets it itself (train.compile).
    set_flag = getattr(torch._C, "_set_deterministic_algorithms", None)
    if set_flag is not None:
        set_flag(True, warn_only=True)
    else:
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    return torch.Generator().manual_seed(seed)


def device_name(device: "torch.device") -> str:
    if device.type == "cuda":
        import torch
        return torch.cuda.get_device_name(device)
    try:  # platform.processor() is often empty on Linux; /proc/cpuinfo names the CPU
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _torchvision_version() -> str:
    """torchvision.__version__ without importing torchvision (about 1 s of a small stage's start-up):
    its version.py holds the full string, CUDA tag included, which the package metadata lacks."""
    import importlib.metadata
    import importlib.util
    import re
    spec = importlib.util.find_spec("torchvision")
    try:
        text = (Path(spec.submodule_search_locations[0]) / "version.py").read_text()
        return re.search(r"^__version__ = '([^']+)'", text, re.M).group(1)
    except (AttributeError, OSError, TypeError):
        return importlib.metadata.version("torchvision")


def environment(device: "torch.device", seed: int) -> dict:
    import torch
    return {
        "device": device.type,
        "device_name": device_name(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torchvision": _torchvision_version(),
        "python": platform.python_version(),
        "seed": seed,
    }
