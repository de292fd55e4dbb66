"""SVHN, cropped digits: two MATLAB files in `data/raw/SVHN/`, each checked against torchvision's MD5.
SciPy reads them as plain arrays (nothing executable); SVHN writes the digit 0 as label 10."""

from __future__ import annotations

import tempfile
from pathlib import Path

from cnnlab import CnnlabError
from cnnlab.datasets import DatasetSpec
from cnnlab.datasets.files import check_md5, download, downloaded, in_mirror, place


def _files() -> dict[str, tuple[str, str, str]]:
    """split -> (url, file name, content MD5), from torchvision's list."""
    import torchvision.datasets
    return {split: tuple(torchvision.datasets.SVHN.split_list[split]) for split in ("train", "test")}


def fetch(spec: DatasetSpec, root: Path, mirror: Path | None, verify: bool, path=None) -> None:
    raw = root / spec.folder
    raw.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        workdir = Path(tmp)
        for url, name, md5 in _files().values():
            source = (in_mirror(mirror, f"{spec.folder}/{name}") if mirror is not None
                      else download([url], name, md5, workdir, f"{spec.folder}/{name}"))
            if verify:
                check_md5(source, name, md5)
            place(source, workdir, raw / name)
    return raw


def decode(spec: DatasetSpec, root: Path, split: str, image_size: int = 0):
    import numpy as np
    import torch
    from scipy.io import loadmat
    path = downloaded(root / spec.folder / _files()[split][1])
    try:
        mat = loadmat(path)
        images = np.asarray(mat["X"], dtype=np.uint8).transpose(3, 2, 0, 1)   # HWCN -> NCHW
        labels = np.asarray(mat["y"], dtype=np.int64).reshape(-1) % 10        # 10 means 0
    except Exception as err:
        raise CnnlabError(f"{path}: not an SVHN .mat file ({type(err).__name__}: {err})") from None
    if len(images) != len(labels):
        raise CnnlabError(f"{path}: {len(images)} images but {len(labels)} labels")
    return torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels)


def classes(spec: DatasetSpec, root: Path) -> tuple[str, ...]:
    return tuple(str(d) for d in range(10))
