"""The stage process around a stage's own work, which a reader of a stage or of the training loop can
skip: the entry point with its interrupts and one-line errors (stage), outputs written all-or-nothing
and figures kept while their data is unchanged (outputs), the phase timings the benchmarks read
(timing), and torchrun's processes launched and their failures reported (torchrun)."""

import os
import signal
import sys

# The parent process when cnnlab's plumbing is first imported (every stage script's first import): a
# stage whose parent has changed by the time it asks to follow its parent lost it in between (stage.py).
PARENT_AT_START = os.getppid()


def _interrupted_early(signum, frame):
    """Ctrl-C before the stage's run() takes over (while it imports torch, say): the same one line
    and exit code as after, not an import's traceback."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not break the way out
    print("error: interrupted", file=sys.stderr)
    raise SystemExit(130)


def _is_stage_script() -> bool:
    """Whether Python runs a stage script (stages/*.py), not a test, a notebook or a library user."""
    script = getattr(sys.modules.get("__main__"), "__file__", None)
    return script is not None and os.path.basename(os.path.dirname(os.path.abspath(script))) == "stages"


if _is_stage_script() and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
    signal.signal(signal.SIGINT, _interrupted_early)
