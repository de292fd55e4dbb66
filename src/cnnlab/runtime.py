"""Device choice, seeding and the environment record written into metrics."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import random
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
