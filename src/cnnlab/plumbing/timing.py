"""Where a stage's time goes: seconds per phase (load, fit, write), recorded for benchmarks/pipeline.py
through CNNLAB_TIMINGS."""

from __future__ import annotations

import json
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

PHASE_SECONDS: dict[str, float] = {}


@contextmanager
def timed(phase: str):
    start = time.perf_counter()
    try:
        yield
    finally:
        PHASE_SECONDS[phase] = PHASE_SECONDS.get(phase, 0.0) + time.perf_counter() - start


def _seconds_since_start() -> float | None:
    """How long ago the kernel started this process (interpreter start-up and imports included)."""
    try:
        with open("/proc/self/stat") as stat, open("/proc/uptime") as uptime:
            started_ticks = int(stat.read().rsplit(")", 1)[1].split()[19])  # field 22: starttime
            return float(uptime.read().split()[0]) - started_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None  # not Linux: start-up is left out of the record


def record_timings(main_started: float) -> None:
    """With CNNLAB_TIMINGS set, append one JSON line of where this stage's time went: start-up
    (process start to main), load, fit, write, and the rest."""
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
