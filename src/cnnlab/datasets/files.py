"""File helpers shared by the dataset formats: the offline mirror, downloads, checksums, and placing
a verified file into data/raw atomically."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
from pathlib import Path

from cnnlab import CnnlabError

MIRROR_ENV = "CNNLAB_DATA_MIRROR"


def mirror_from_env() -> Path | None:
    value = os.environ.get(MIRROR_ENV)
    return Path(value).expanduser().resolve() if value else None


def md5_of(path: Path, gzipped: bool = False) -> str:
    digest = hashlib.md5()
    with (gzip.open(path, "rb") if gzipped else open(path, "rb")) as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_md5(path: Path, what: str, expected: str) -> None:
    actual = md5_of(path)
    if actual != expected:
        raise CnnlabError(f"{path}: corrupt or not the original {what}: MD5 {actual}, expected {expected}; "
                          f"replace it with the original file")


def is_gzip(path: Path) -> bool:
    with open(path, "rb") as stream:
        return stream.read(2) == b"\x1f\x8b"


def place(source: Path, workdir: Path, target: Path) -> None:
    """Copy a verified file to target atomically: a copy under workdir first, then a rename."""
    partial = workdir / f"{target.name}.part"
    shutil.copyfile(source, partial)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(partial, target)


def downloaded(path: Path) -> Path:
    """`path`, which the download stage writes; a clear line when it has not run."""
    if not path.exists():
        raise CnnlabError(f"{path}: missing; run the download stage first (dvc repro download)")
    return path


def in_mirror(mirror: Path, *candidates: str) -> Path:
    """The first of `candidates` (paths relative to the mirror) that exists there."""
    for candidate in candidates:
        if (mirror / candidate).exists():
            return mirror / candidate
    raise CnnlabError(f"{MIRROR_ENV}={mirror}: missing {' or '.join(candidates)}; copy the original there, "
                      f"or unset {MIRROR_ENV} to download it")


def download(urls: list[str], filename: str, md5: str | None, workdir: Path, what: str) -> Path:
    """Fetch `filename` from the first of `urls` that answers (torchvision's downloader)."""
    from torchvision.datasets.utils import download_url
    errors = []
    for url in urls:
        try:
            download_url(url, str(workdir), filename=filename, md5=md5)
            return workdir / filename
        except Exception as err:  # network errors come in many types; all mean "try the next one"
            errors.append(f"{url}: {type(err).__name__}")
    raise CnnlabError(f"could not download {filename} ({'; '.join(errors)}); without network, set "
                      f"{MIRROR_ENV} to a folder holding {what}")


def torchvision_attribute(module: str, cls: str, attribute: str):
    """A class attribute of torchvision.datasets.<cls> (file lists, checksums, mirrors, class names):
    torchvision's own, through its public classes. (`module` names the torchvision module that
    defines the class, for the message of a torchvision without it.)"""
    import torchvision.datasets
    try:
        return getattr(getattr(torchvision.datasets, cls), attribute)
    except AttributeError:
        raise CnnlabError(f"torchvision {torchvision.__version__} has no datasets.{cls}.{attribute} "
                          f"(torchvision/datasets/{module}.py); install the version in requirements.lock") from None
