"""The stage process around a stage's own work, which a reader of a stage or of the training loop can
skip: the entry point with its interrupts and one-line errors (stage), outputs written all-or-nothing
and figures kept while their data is unchanged (outputs), the phase timings the benchmarks read
(timing), and torchrun's processes launched and their failures reported (torchrun)."""

import os

# The parent process when cnnlab's plumbing is first imported (every stage script's first import): a
# stage whose parent has changed by the time it asks to follow its parent lost it in between (stage.py).
PARENT_AT_START = os.getppid()
