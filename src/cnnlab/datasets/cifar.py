"""CIFAR-10 and CIFAR-100, torchvision's python version: pickled batches in
`data/raw/cifar-10-batches-py/` (`cifar-100-python/`), every file checked against torchvision's MD5.

The format is pickled, so reading it needs unpickling: only what the original files contain is
allowed (dicts, lists, strings, numpy arrays), so a doctored file cannot run code.
"""

from __future__ import annotations

import pickle
import tarfile
import tempfile
from pathlib import Path

from cnnlab import CnnlabError
from cnnlab.datasets import DatasetSpec
from cnnlab.datasets.files import MIRROR_ENV, check_md5, download, downloaded, place


def _source(spec: DatasetSpec):
    import torchvision.datasets
    return getattr(torchvision.datasets, spec.meta["torchvision"])


def _files(source) -> list[tuple[str, str]]:
    """(file name, content MD5) of every file cnnlab reads, from torchvision's lists."""
    return [*map(tuple, source.train_list), *map(tuple, source.test_list),
            (source.meta["filename"], source.meta["md5"])]


def fetch(spec: DatasetSpec, root: Path, mirror: Path | None, verify: bool, path=None) -> None:
    """From the mirror's extracted folder (torchvision's layout) or its .tar.gz, else the network."""
    source = _source(spec)
    raw = root / spec.folder
    raw.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        workdir = Path(tmp)
        if mirror is not None and (mirror / spec.folder).is_dir():
            source_dir = mirror / spec.folder
        else:
            if mirror is not None:
                archive = mirror / source.filename
                if not archive.is_file():
                    raise CnnlabError(
                        f"{MIRROR_ENV}={mirror}: missing {spec.folder}/ and {source.filename}; copy either "
                        f"there (as torchvision stores them), or unset {MIRROR_ENV} to download")
            else:
                archive = download([source.url], source.filename, source.tgz_md5, workdir, spec.folder)
            if verify:
                check_md5(archive, source.filename, source.tgz_md5)
            _extract(archive, workdir)
            source_dir = workdir / spec.folder
        for name, md5 in _files(source):
            path = source_dir / name
            if not path.is_file():
                raise CnnlabError(f"{path}: missing from {spec.name}; replace the folder with the original")
            if verify:
                check_md5(path, name, md5)
            place(path, workdir, raw / name)
    return raw


MAX_ARCHIVE_BYTES = 1 << 30  # CIFAR-10 and CIFAR-100 unpack to under 200 MB


def _extract(archive: Path, into: Path) -> None:
    try:
        with tarfile.open(archive, "r:gz") as tar:
            declared = sum(member.size for member in tar.getmembers())
            if declared > MAX_ARCHIVE_BYTES:  # checked from the headers, before anything is unpacked
                raise CnnlabError(f"{archive}: unpacks to {declared:,} bytes, over the {MAX_ARCHIVE_BYTES:,}-byte "
                                  f"limit; not an original CIFAR archive")
            tar.extractall(into, filter="data")  # refuses absolute paths, links out and devices
    except (tarfile.TarError, OSError, EOFError) as err:
        raise CnnlabError(f"{archive}: not a readable .tar.gz ({err}); replace it with the original file") from None


class _ArraysOnly(pickle.Unpickler):
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"),
               ("_codecs", "encode")}  # how protocol-2 pickles written by Python 3 spell bytes

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused global {module}.{name}")


def _text(value) -> str:
    return value.decode("latin1") if isinstance(value, bytes) else str(value)


def _read(path: Path) -> dict:
    downloaded(path)
    try:
        with open(path, "rb") as stream:
            blob = _ArraysOnly(stream, encoding="latin1").load()
    except Exception as err:  # refused globals, truncation, garbage: all mean "not an original file"
        raise CnnlabError(f"{path}: not a CIFAR batch file ({type(err).__name__}: {err})") from None
    if not isinstance(blob, dict):
        raise CnnlabError(f"{path}: not a CIFAR batch file (no dictionary inside)")
    return {_text(key): value for key, value in blob.items()}


def decode(spec: DatasetSpec, root: Path, split: str, image_size: int = 0):
    import numpy as np
    import torch
    source = _source(spec)
    images, labels = [], []
    for name, _ in (source.train_list if split == "train" else source.test_list):
        path = root / spec.folder / name
        batch = _read(path)
        try:
            data = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            targets = np.asarray(batch[spec.meta["label_key"]], dtype=np.int64)
        except (KeyError, ValueError) as err:
            raise CnnlabError(f"{path}: not a CIFAR batch file ({type(err).__name__}: {err})") from None
        if len(data) != len(targets):
            raise CnnlabError(f"{path}: {len(data)} images but {len(targets)} labels")
        images.append(torch.from_numpy(data.copy()))
        labels.append(torch.from_numpy(targets))
    return torch.cat(images).contiguous(), torch.cat(labels)


def classes(spec: DatasetSpec, root: Path) -> tuple[str, ...]:
    """From the dataset's own meta file."""
    source = _source(spec)
    meta = _read(root / spec.folder / source.meta["filename"])
    return tuple(_text(name) for name in meta[source.meta["key"]])
