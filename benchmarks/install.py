"""How long `make setup` takes and how much disk its environment needs: a fresh venv made as the
Makefile makes it (`python3 -m venv`, then requirements.lock, then the project with `--no-deps -e .`),
with uv and with pip, timed from the venv's creation to the end of the install and sized with `du`.

    python benchmarks/install.py               # uv and pip, each from an empty cache, then from that cache
    python benchmarks/install.py --tools uv    # uv only (a few minutes less)

Each tool gets a cache folder of its own, empty for the first install (every wheel downloaded from
the index: PyPI, the tools' user configuration ignored) and full for the second (every wheel from
that cache, as on a second clone of the project). uv is taken from PATH, or UV=/path/to/uv.
Results: benchmarks/results/install.json and install.md (CPU, Python, tool versions, cache state).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
INDEX = "https://pypi.org/simple"


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def uv_path() -> str:
    return os.environ.get("UV") or "uv"


def install_commands(tool: str, python: str, cache: Path) -> list[list[str]]:
    """The Makefile's install lines for `tool`, with its own cache and no user configuration."""
    if tool == "uv":
        uv = [uv_path(), "pip", "install", "--quiet", "--no-config", "--cache-dir", str(cache), "--python", python,
              "--index-url", INDEX]
        return [uv + ["-r", "requirements.lock"], uv + ["--no-deps", "-e", "."]]
    pip = [python, "-m", "pip", "--isolated", "install", "--quiet", "--cache-dir", str(cache), "--index-url", INDEX]
    return [pip + ["--upgrade", "pip"], pip + ["-r", "requirements.lock"], pip + ["--no-deps", "-e", "."]]


def size_mb(folder: Path) -> int:
    return int(subprocess.run(["du", "-sm", str(folder)], capture_output=True, text=True, check=True).stdout.split()[0])


def install(tool: str, cache: Path, scratch: Path) -> dict:
    """One `make setup` into a new venv: seconds and megabytes on disk."""
    venv = scratch / f"venv-{tool}"
    shutil.rmtree(venv, ignore_errors=True)
    cached = size_mb(cache) if cache.exists() else 0
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PIP_", "UV_"))}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    for command in install_commands(tool, str(venv / "bin" / "python"), cache):
        subprocess.run(command, cwd=REPO, env=env, check=True)
    seconds = time.perf_counter() - start
    found = {"tool": tool, "cache": "full" if cached else "empty", "cache_mb_before": cached,
             "seconds": round(seconds, 1), "venv_mb": size_mb(venv)}
    shutil.rmtree(venv)
    print(found, flush=True)
    return found


def version(tool: str) -> str:
    command = [uv_path(), "--version"] if tool == "uv" else [sys.executable, "-m", "pip", "--version"]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout.split()[1]


def markdown(found: dict) -> str:
    env = found["env"]
    lines = ["# Install: `make setup`'s fresh environment, its time and its size on disk", "",
             f"Measured {found['date']} by `python benchmarks/install.py` on {env['cpu']} ({env['cores']} cores, "
             f"{env['platform']}, Python {env['python']}), from {INDEX}: a fresh venv made as `make setup` makes it, "
             f"timed from its creation to the end of the install, its size by `du -sm` (1 GB = 1024 MB). "
             f"Each tool's first install starts from an empty cache (every wheel downloaded), the second from "
             f"the cache the first one filled.", "",
             "| install | size | time, empty cache (downloads) | time, from the first install's cache |", "| --- | ---: | ---: | ---: |"]
    for tool in dict.fromkeys(run["tool"] for run in found["runs"]):
        runs = {run["cache"]: run for run in found["runs"] if run["tool"] == tool}
        size = max(run["venv_mb"] for run in runs.values()) / 1024
        first, second = runs.get("empty"), runs.get("full")
        times = [f"{first['seconds']:.0f} s" if first else "",
                 f"{second['seconds']:.0f} s (cache {second['cache_mb_before']:,} MB)" if second else ""]
        lines.append(f"| {tool} {env['versions'][tool]}, `requirements.lock` | {size:.1f} GB | " + " | ".join(times) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tools", nargs="+", choices=["uv", "pip"], default=["uv", "pip"])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if "uv" in args.tools and not shutil.which(uv_path()):
        sys.exit("benchmarks/install.py: uv is not on PATH; install it (pip install uv) or set UV=/path/to/uv")
    with tempfile.TemporaryDirectory(prefix="cnnlab-install-") as scratch:
        runs = [install(tool, Path(scratch) / f"cache-{tool}", Path(scratch)) for tool in args.tools for _ in range(2)]
    found = {"runs": runs, "date": datetime.date.today().isoformat(),
             "env": {"cpu": cpu_name(), "cores": os.cpu_count(), "platform": f"{platform.system()} {platform.machine()}",
                     "python": platform.python_version(), "versions": {tool: version(tool) for tool in args.tools},
                     "index": INDEX}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "install.json").write_text(json.dumps(found, indent=1) + "\n")
    (args.out / "install.md").write_text(markdown(found))
    print(markdown(found))


if __name__ == "__main__":
    main()
