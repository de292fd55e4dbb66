"""The MNIST family (MNIST, Fashion-MNIST, KMNIST): four IDX files each, fetched as torchvision lists
them and kept uncompressed in torchvision's layout, `data/raw/<Class>/raw/<file>`.

Integrity is checked on the uncompressed content wherever its checksum is known (MNIST): a mirror may
hold the files compressed or plain, re-compressed even, and the content is what matters. Where only
the original archive's checksum is known (torchvision's list), the file must be served as that .gz.
"""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
from pathlib import Path

from cnnlab import CnnlabError
from cnnlab.datasets import DatasetSpec
from cnnlab.datasets.files import check_md5, download, downloaded, in_mirror, is_gzip, md5_of

SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _torchvision_class(spec: DatasetSpec):
    import torchvision.datasets
    return getattr(torchvision.datasets, spec.meta["torchvision"])


def files(spec: DatasetSpec) -> list[tuple[str, str]]:
    """(uncompressed file name, original archive MD5) of each raw file, from torchvision's list."""
    return [(archive.removesuffix(".gz"), md5) for archive, md5 in _torchvision_class(spec).resources]


def _verify(spec: DatasetSpec, name: str, source: Path, content: Path, archive_md5: str) -> None:
    expected = spec.meta.get("content_md5", {}).get(name)
    if expected is not None:
        actual = md5_of(content)
        if actual != expected:
            raise CnnlabError(
                f"{source}: corrupt or not the original {name}: content MD5 {actual}, expected {expected}; "
                f"replace it with the original file")
        return
    if not is_gzip(source):
        raise CnnlabError(
            f"{source}: cannot verify {name}: only the original archive's checksum is known for "
            f"{spec.name}; provide the original {name}.gz")
    check_md5(source, f"{name}.gz", archive_md5)


def fetch(spec: DatasetSpec, root: Path, mirror: Path | None, verify: bool, path=None) -> None:
    raw = root / spec.folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        workdir = Path(tmp)
        for name, archive_md5 in files(spec):
            if mirror is not None:
                source = in_mirror(mirror, f"{spec.folder}/raw/{name}", f"{spec.folder}/raw/{name}.gz")
            else:
                source = download([base + f"{name}.gz" for base in _torchvision_class(spec).mirrors],
                                  f"{name}.gz", archive_md5, workdir, f"{spec.folder}/raw/{name}.gz")
            content = workdir / name
            try:
                with (gzip.open(source, "rb") if is_gzip(source) else open(source, "rb")) as src, \
                        open(content, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
            except (OSError, EOFError) as err:
                raise CnnlabError(f"{source}: unreadable ({err}); replace it with the original file") from None
            if verify:
                _verify(spec, name, source, content, archive_md5)
            os.replace(content, raw / name)
    return raw


def decode(spec: DatasetSpec, root: Path, split: str, image_size: int = 0):
    from torchvision.datasets.mnist import read_image_file, read_label_file
    raw = root / spec.folder / "raw"
    image_file, label_file = (downloaded(raw / name) for name in SPLIT_FILES[split])
    try:
        images, labels = read_image_file(str(image_file)), read_label_file(str(label_file))
    except Exception as err:  # torchvision raises assertions/ValueErrors on malformed IDX
        raise CnnlabError(f"{image_file.parent}: not valid IDX data ({type(err).__name__}: {err})") from None
    if len(images) != len(labels):
        raise CnnlabError(f"{raw}: {split} has {len(images)} images but {len(labels)} labels")
    return images.unsqueeze(1).contiguous(), labels.long()


def classes(spec: DatasetSpec, root: Path) -> tuple[str, ...]:
    return spec.meta.get("classes") or tuple(_torchvision_class(spec).classes)
