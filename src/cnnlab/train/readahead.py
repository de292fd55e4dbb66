"""Reading ahead in a memory-mapped split: the kernel is told which rows of the .npy file the next
batch will gather (posix_fadvise WILLNEED), so that the disk reads them all at once while a batch
trains, instead of one page fault at a time. It matters when the split is bigger than memory and
every epoch reads it from disk again (docs/performance.md)."""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import numpy as np
import torch

PAGE = mmap.PAGESIZE  # a smaller row is read whole by the one page fault that first touches it


class Readahead:
    """Called with row numbers: asks the kernel to read those rows of `npy_file` into the page cache."""

    def __init__(self, npy_file: Path, offset: int, row_bytes: int):
        self.npy_file, self.offset, self.row_bytes = npy_file, offset, row_bytes

    def __call__(self, rows: torch.Tensor) -> None:
        try:
            fd = os.open(self.npy_file, os.O_RDONLY)
        except OSError:
            return  # advice only: the memory map reads on without it (the file was replaced, say)
        try:
            for row in rows.tolist():
                os.posix_fadvise(fd, self.offset + row * self.row_bytes, self.row_bytes, os.POSIX_FADV_WILLNEED)
        finally:
            os.close(fd)


def for_split(npy_file: Path) -> Readahead | None:
    """A Readahead for the images of a prepared split, or None where it would not help: rows under
    a page, or a system without posix_fadvise (macOS, Windows)."""
    if not hasattr(os, "posix_fadvise"):
        return None
    mapped = np.load(npy_file, mmap_mode="r")  # only the header is read: where the rows start, how long each is
    if len(mapped) == 0 or mapped[0].nbytes < PAGE:
        return None
    return Readahead(Path(npy_file), mapped.offset, mapped[0].nbytes)
