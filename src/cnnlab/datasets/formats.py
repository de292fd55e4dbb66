"""The calls the stages make, each handed to the module of the dataset's file format: `fetch`
(download stage: raw files, verified, into data/raw), `decode_all` (prepare stage: every split
decoded to uint8 tensors, with the class names, as cnnlab.prepare.prepare takes them).

To add a format: a module in this package with fetch(spec, root, mirror, verify, path) (returns the
folder it filled),
decode(spec, root, split, image_size) and classes(spec, root), and its entry in FORMATS.
"""

from __future__ import annotations

from pathlib import Path

from cnnlab import CnnlabError
from cnnlab.datasets import DATASETS, cifar, folder, idx, svhn
from cnnlab.datasets.files import MIRROR_ENV

FORMATS = {"idx": idx, "cifar": cifar, "svhn": svhn, "folder": folder}


def fetch(dataset: str, root: Path, mirror: Path | None = None, verify: bool = True,
          path: str | None = None) -> Path:
    """Place every raw file of `dataset` under root, verified; return their folder."""
    spec = DATASETS[dataset]
    if mirror is not None and not mirror.is_dir():
        raise CnnlabError(f"{MIRROR_ENV}={mirror}: not a folder")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    return FORMATS[spec.format].fetch(spec, root, mirror, verify, path)


def splits(dataset: str, root: Path) -> tuple[str, ...]:
    """The splits the raw data comes in: ("train", "test") for the published datasets; for a folder,
    those it has ("all" for a plain class tree: prepare carves the rest)."""
    spec = DATASETS[dataset]
    own = getattr(FORMATS[spec.format], "splits", None)
    return own(spec, Path(root)) if own else ("train", "test")


def class_names(dataset: str, root: Path) -> tuple[str, ...]:
    """The class names; a format with a data card (folder) returns them as ClassNames, carrying it."""
    spec = DATASETS[dataset]
    names = FORMATS[spec.format].classes(spec, Path(root))
    return names if isinstance(names, tuple) else tuple(names)


def load_split(dataset: str, root: Path, split: str, image_size: int = 32):
    """Decode one split to (images uint8 [N, C, H, W], labels int64 [N]); image_size is used by
    formats whose images come in any size (folder)."""
    spec = DATASETS[dataset]
    images, labels = FORMATS[spec.format].decode(spec, Path(root), split, image_size)
    classes = class_names(dataset, root)
    if len(images) != len(labels):
        raise CnnlabError(f"{Path(root) / spec.folder}: {split} has {len(images)} images but {len(labels)} labels")
    if labels.numel() and (labels.min() < 0 or labels.max() >= len(classes)):
        raise CnnlabError(f"{Path(root) / spec.folder}: {split} labels outside 0..{len(classes) - 1}")
    return images, labels


def decode_all(dataset: str, root: Path, image_size: int = 32) -> tuple:
    """(train, test or None, class names, val or None): every split the raw data holds, decoded,
    in the order cnnlab.prepare.prepare takes them. A folder without a test split comes as one set
    (`all`): it is the train argument, and prepare carves test (and val) from it."""
    decoded = {split: load_split(dataset, root, split, image_size) for split in splits(dataset, root)}
    return (decoded.get("train", decoded.get("all")), decoded.get("test"), class_names(dataset, root),
            decoded.get("val"))
