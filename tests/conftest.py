"""Fixtures: small generated datasets in the real on-disk formats, so tests never need downloads."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
REAL_MIRROR = REPO.parent / "shared" / "datasets"


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> Path:
    """Write a uint8 array as an IDX file (big-endian header: 0, 0, type 0x08, ndim; then each dim)."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)
    return path


def synthetic_digits(n: int, seed: int, num_classes: int = 10, size: int = 28) -> tuple[np.ndarray, np.ndarray]:
    """Images whose class is the position of a bright square (jittered, on noise): easy to learn,
    impossible to guess without looking at the pixels."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % num_classes
    rng.shuffle(labels)
    images = rng.integers(0, 60, size=(n, size, size), dtype=np.uint8)
    for i, label in enumerate(labels):
        row, col = divmod(int(label), 5)
        top = 4 + row * 12 + int(rng.integers(-1, 2))
        left = 1 + col * 5 + int(rng.integers(0, 2))
        images[i, top:top + 7, left:left + 4] = rng.integers(180, 256)
    return images, labels.astype(np.uint8)


def make_mirror(root: Path, folder: str = "MNIST", n_train: int = 600, n_test: int = 200,
                gz: bool = True) -> Path:
    """A mirror in torchvision's layout: <root>/<folder>/raw/<file>[.gz]."""
    raw = root / folder / "raw"
    for prefix, n, seed in (("train", n_train, 1), ("t10k", n_test, 2)):
        images, labels = synthetic_digits(n, seed)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images, gz)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels, gz)
    return root


@pytest.fixture
def mirror(tmp_path) -> Path:
    return make_mirror(tmp_path / "mirror")


@pytest.fixture
def real_mirror() -> Path:
    if not (REAL_MIRROR / "MNIST" / "raw").is_dir():
        pytest.skip(f"real MNIST not found at {REAL_MIRROR}/MNIST/raw")
    return REAL_MIRROR


def base_params() -> dict:
    """A valid params dict, as params.yaml in the repo would load, for small in-process runs."""
    from cnnlab import params
    return params.load(REPO / "params.yaml")
