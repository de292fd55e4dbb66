"""Dataset registry: fetch raw files (offline mirror or network), verify them, decode to uint8 tensors.

Raw files are kept uncompressed in torchvision's layout (`data/raw/<Class>/raw/<file>`), so torchvision's
own readers decode them. Integrity is checked on the uncompressed content: a mirror may hold the files
gzipped, re-compressed or plain, and the content is what matters.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torchvision.datasets as tvd
from torchvision.datasets.mnist import read_image_file, read_label_file

from cnnlab import CnnlabError

MIRROR_ENV = "CNNLAB_DATA_MIRROR"


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    source: type  # the torchvision dataset class: its name, file list and download mirrors
    classes: tuple[str, ...]
    # MD5 of each file's uncompressed content. Where none is known, the original archive's MD5
    # (torchvision's list) is the check, so the file must then be served as the original .gz.
    content_md5: dict[str, str] = field(default_factory=dict)
    channels: int = 1
    image_size: int = 28

    @property
    def folder(self) -> str:
        return self.source.__name__

    def files(self) -> list[tuple[str, str]]:
        """(uncompressed file name, original archive MD5) for each raw file."""
        return [(archive.removesuffix(".gz"), md5) for archive, md5 in self.source.resources]


DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        "mnist", tvd.MNIST, tuple(str(d) for d in range(10)),
        content_md5={
            "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
            "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
            "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
            "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
        },
    ),
    "fashion_mnist": DatasetSpec("fashion_mnist", tvd.FashionMNIST, tuple(tvd.FashionMNIST.classes)),
    "kmnist": DatasetSpec("kmnist", tvd.KMNIST, tuple(tvd.KMNIST.classes)),
}

SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def md5_of(path: Path, gzipped: bool = False) -> str:
    digest = hashlib.md5()
    with (gzip.open(path, "rb") if gzipped else open(path, "rb")) as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as stream:
        return stream.read(2) == b"\x1f\x8b"


def _find_in_mirror(spec: DatasetSpec, mirror: Path, name: str) -> Path:
    folder = mirror / spec.folder / "raw"
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise CnnlabError(
        f"{MIRROR_ENV}={mirror}: missing {spec.folder}/raw/{name}(.gz); copy the original file there, "
        f"or unset {MIRROR_ENV} to download it")


def _download(spec: DatasetSpec, archive: str, md5: str, workdir: Path) -> Path:
    from torchvision.datasets.utils import download_url
    errors = []
    for base in spec.source.mirrors:
        try:
            download_url(base + archive, str(workdir), filename=archive, md5=md5)
            return workdir / archive
        except Exception as err:  # network errors come in many types; all mean "try the next mirror"
            errors.append(f"{base}: {type(err).__name__}")
    raise CnnlabError(
        f"could not download {archive} ({'; '.join(errors)}); without network, set {MIRROR_ENV} to a "
        f"folder holding {spec.folder}/raw/{archive}")


def _verify(spec: DatasetSpec, name: str, source: Path, content: Path, archive_md5: str) -> None:
    expected = spec.content_md5.get(name)
    if expected is not None:
        actual = md5_of(content)
        if actual != expected:
            raise CnnlabError(
                f"{source}: corrupt or not the original {name}: content MD5 {actual}, expected {expected}; "
                f"replace it with the original file")
        return
    if not _is_gzip(source):
        raise CnnlabError(
            f"{source}: cannot verify {name}: only the original archive's checksum is known for "
            f"{spec.name}; provide the original {name}.gz")
    actual = md5_of(source)
    if actual != archive_md5:
        raise CnnlabError(
            f"{source}: corrupt or not the original {name}.gz: MD5 {actual}, expected {archive_md5}; "
            f"replace it with the original file")


def fetch(dataset: str, root: Path, mirror: Path | None = None, verify: bool = True) -> Path:
    """Place every raw file of `dataset`, uncompressed and verified, under root/<Class>/raw/."""
    spec = DATASETS[dataset]
    raw = root / spec.folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    if mirror is not None and not mirror.is_dir():
        raise CnnlabError(f"{MIRROR_ENV}={mirror}: not a folder")
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        workdir = Path(tmp)
        for name, archive_md5 in spec.files():
            source = (_find_in_mirror(spec, mirror, name) if mirror is not None
                      else _download(spec, f"{name}.gz", archive_md5, workdir))
            content = workdir / name
            try:
                with (gzip.open(source, "rb") if _is_gzip(source) else open(source, "rb")) as src, \
                        open(content, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
            except (OSError, EOFError) as err:
                raise CnnlabError(f"{source}: unreadable ({err}); replace it with the original file") from None
            if verify:
                _verify(spec, name, source, content, archive_md5)
            os.replace(content, raw / name)
    return raw


def mirror_from_env() -> Path | None:
    value = os.environ.get(MIRROR_ENV)
    return Path(value).expanduser().resolve() if value else None


def load_split(dataset: str, root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode one split to (images uint8 [N, C, H, W], labels int64 [N])."""
    spec = DATASETS[dataset]
    raw = root / spec.folder / "raw"
    image_file, label_file = (raw / name for name in SPLIT_FILES[split])
    for path in (image_file, label_file):
        if not path.is_file():
            raise CnnlabError(f"{path}: missing; run the download stage first (dvc repro download)")
    try:
        images, labels = read_image_file(str(image_file)), read_label_file(str(label_file))
    except Exception as err:  # torchvision raises assertions/ValueErrors on malformed IDX
        raise CnnlabError(f"{image_file.parent}: not valid IDX data ({type(err).__name__}: {err})") from None
    if len(images) != len(labels):
        raise CnnlabError(f"{raw}: {split} has {len(images)} images but {len(labels)} labels")
    if labels.numel() and (labels.min() < 0 or labels.max() >= len(spec.classes)):
        raise CnnlabError(f"{label_file}: labels outside 0..{len(spec.classes) - 1}")
    return images.unsqueeze(1).contiguous(), labels.long()
