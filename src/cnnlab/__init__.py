"""cnnlab: a reproducible DVC pipeline that trains, evaluates and inspects classic image classifiers.

Data flows download -> prepare -> train -> evaluate -> report; each stage script in `stages/` is a
thin wrapper over one module here.
"""

import os
import time
from contextlib import contextmanager

# The parent process as a stage script first imports cnnlab (its first import): a stage whose parent
# has changed by the time it asks to follow its parent lost it in between (cnnlab.core.stage).
PARENT_AT_START = os.getppid()


class CnnlabError(Exception):
    """A problem the user can fix (bad params, missing data). Stages print it as one line, exit 1."""


# Seconds a stage spends in each phase (load, fit, write), summed: benchmarks/pipeline.py reads
# them, through CNNLAB_TIMINGS, to split each stage's wall time.
PHASE_SECONDS: dict[str, float] = {}


@contextmanager
def timed(phase: str):
    start = time.perf_counter()
    try:
        yield
    finally:
        PHASE_SECONDS[phase] = PHASE_SECONDS.get(phase, 0.0) + time.perf_counter() - start


__all__ = ["CnnlabError", "PARENT_AT_START", "PHASE_SECONDS", "timed"]
