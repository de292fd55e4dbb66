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
    """A class attribute of torchvision.datasets.<module>.<cls> (file lists, checksums, mirrors,
    class names), read from torchvision's source rather than imported: importing torchvision.datasets
    imports all of torchvision (1.5-3 s, most of a download or prepare stage). Falls back to the
    import where the attribute is inherited or not a literal. A test checks both ways agree."""
    import ast
    import importlib.util
    try:
        package = Path(importlib.util.find_spec("torchvision").submodule_search_locations[0])
        tree = ast.parse((package / "datasets" / f"{module}.py").read_text())
        for node in tree.body:
            if isinstance(node, ast.ClassDef) and node.name == cls:
                for item in node.body:
                    targets = item.targets if isinstance(item, ast.Assign) else \
                        [item.target] if isinstance(item, ast.AnnAssign) and item.value is not None else []
                    if any(isinstance(t, ast.Name) and t.id == attribute for t in targets):
                        return ast.literal_eval(item.value)
    except (AttributeError, OSError, SyntaxError, TypeError, ValueError):
        pass
    import torchvision.datasets
    return getattr(getattr(torchvision.datasets, cls), attribute)
