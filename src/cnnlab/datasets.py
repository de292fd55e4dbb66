"""Dataset registry: fetch raw files (offline mirror or network), verify them, decode to uint8 tensors.

Raw files are kept uncompressed in torchvision's layout: `data/raw/<Class>/raw/<file>` for the MNIST
family (decoded by torchvision's IDX readers), `data/raw/cifar-10-batches-py/` and
`data/raw/cifar-100-python/` for CIFAR, `data/raw/SVHN/` for SVHN. Integrity is checked on the
uncompressed content wherever its checksum is known: a mirror may hold the files compressed or
plain, and the content is what matters.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import shutil
import tarfile
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
    kind: str = "idx"  # idx (MNIST family) | cifar | svhn: how files are fetched and decoded

    @property
    def folder(self) -> str:
        if self.kind == "cifar":
            return self.source.base_folder
        if self.kind == "folder":
            return "folder"
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
    # CIFAR's class names come from its own meta file (see class_names); its files' MD5s are known
    "cifar10": DatasetSpec("cifar10", tvd.CIFAR10, (), channels=3, image_size=32, kind="cifar"),
    "cifar100": DatasetSpec("cifar100", tvd.CIFAR100, (), channels=3, image_size=32, kind="cifar"),
    "svhn": DatasetSpec("svhn", tvd.SVHN, tuple(str(d) for d in range(10)), channels=3, image_size=32,
                        kind="svhn"),
    # the user's own images (data.path, data.image_size); classes from the folder names
    "folder": DatasetSpec("folder", tvd.ImageFolder, (), kind="folder"),
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


def _check_md5(path: Path, name: str, expected: str) -> None:
    """A file whose whole-file MD5 is known (CIFAR's batches and archive, SVHN's .mat files)."""
    actual = md5_of(path)
    if actual != expected:
        raise CnnlabError(f"{path}: corrupt or not the original {name}: MD5 {actual}, expected {expected}; "
                          f"replace it with the original file")


def _place(source: Path, workdir: Path, raw: Path, name: str) -> None:
    """Copy a verified file into raw/ atomically: a copy under workdir first, then a rename."""
    shutil.copyfile(source, workdir / f"{name}.part")
    os.replace(workdir / f"{name}.part", raw / name)


def _downloaded(path: Path) -> Path:
    """`path`, which the download stage writes; a clear line when it has not run."""
    if not path.is_file():
        raise CnnlabError(f"{path}: missing; run the download stage first (dvc repro download)")
    return path


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


def fetch(dataset: str, root: Path, mirror: Path | None = None, verify: bool = True,
          path: str | None = None, image_size: int = 32) -> Path:
    """Place every raw file of `dataset`, uncompressed and verified, under root; return their folder.
    For `folder`, decode the images under `path` once, at image_size, into uint8 tensors instead."""
    spec = DATASETS[dataset]
    if spec.kind == "folder":
        return _fetch_folder(spec, root, path, image_size)
    if mirror is not None and not mirror.is_dir():
        raise CnnlabError(f"{MIRROR_ENV}={mirror}: not a folder")
    fetcher = {"idx": _fetch_idx, "cifar": _fetch_cifar, "svhn": _fetch_svhn}[spec.kind]
    return fetcher(spec, root, mirror, verify)


def _fetch_idx(spec: DatasetSpec, root: Path, mirror: Path | None, verify: bool) -> Path:
    raw = root / spec.folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
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
    loader = {"idx": _load_idx, "cifar": _load_cifar, "svhn": _load_svhn, "folder": _load_folder}[spec.kind]
    images, labels = loader(spec, root, split)
    classes = class_names(dataset, root)
    if labels.numel() and (labels.min() < 0 or labels.max() >= len(classes)):
        raise CnnlabError(f"{root / spec.folder}: {split} labels outside 0..{len(classes) - 1}")
    return images, labels


def class_names(dataset: str, root: Path) -> tuple[str, ...]:
    spec = DATASETS[dataset]
    if spec.kind == "folder":
        return tuple(_folder_classes(root / spec.folder))
    if spec.kind != "cifar":
        return spec.classes
    meta = _read_cifar_file(root / spec.folder / spec.source.meta["filename"])
    return tuple(_text(name) for name in meta[spec.source.meta["key"]])


def _load_idx(spec: DatasetSpec, root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    raw = root / spec.folder / "raw"
    image_file, label_file = (raw / name for name in SPLIT_FILES[split])
    for path in (image_file, label_file):
        _downloaded(path)
    try:
        images, labels = read_image_file(str(image_file)), read_label_file(str(label_file))
    except Exception as err:  # torchvision raises assertions/ValueErrors on malformed IDX
        raise CnnlabError(f"{image_file.parent}: not valid IDX data ({type(err).__name__}: {err})") from None
    if len(images) != len(labels):
        raise CnnlabError(f"{raw}: {split} has {len(images)} images but {len(labels)} labels")
    if labels.numel() and (labels.min() < 0 or labels.max() >= len(spec.classes)):
        raise CnnlabError(f"{label_file}: labels outside 0..{len(spec.classes) - 1}")
    return images.unsqueeze(1).contiguous(), labels.long()


# --- CIFAR-10 / CIFAR-100 (torchvision's python version) ----------------------------------------

def _cifar_files(spec: DatasetSpec) -> list[tuple[str, str]]:
    """(file name, content MD5) of every file cnnlab reads, from torchvision's lists."""
    source = spec.source
    return [*map(tuple, source.train_list), *map(tuple, source.test_list),
            (source.meta["filename"], source.meta["md5"])]


def _fetch_cifar(spec: DatasetSpec, root: Path, mirror: Path | None, verify: bool) -> Path:
    """From the mirror's extracted folder (torchvision's layout) or its .tar.gz, else the network."""
    raw = root / spec.folder
    raw.mkdir(parents=True, exist_ok=True)
    archive_name, archive_md5 = spec.source.filename, spec.source.tgz_md5
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        workdir = Path(tmp)
        if mirror is not None and (mirror / spec.folder).is_dir():
            source_dir = mirror / spec.folder
        else:
            if mirror is not None:
                archive = mirror / archive_name
                if not archive.is_file():
                    raise CnnlabError(
                        f"{MIRROR_ENV}={mirror}: missing {spec.folder}/ and {archive_name}; copy either "
                        f"there (as torchvision stores them), or unset {MIRROR_ENV} to download")
            else:
                archive = _download_url(spec.source.url, archive_name, archive_md5, workdir, spec.folder)
            if verify:
                _check_md5(archive, archive_name, archive_md5)
            _extract(archive, workdir)
            source_dir = workdir / spec.folder
        for name, md5 in _cifar_files(spec):
            path = source_dir / name
            if not path.is_file():
                raise CnnlabError(f"{path}: missing from {spec.name}; replace the folder with the original")
            if verify:
                _check_md5(path, name, md5)
            _place(path, workdir, raw, name)
    return raw


def _download_url(url: str, filename: str, md5: str, workdir: Path, what: str) -> Path:
    from torchvision.datasets.utils import download_url
    try:
        download_url(url, str(workdir), filename=filename, md5=md5)
    except Exception as err:  # network errors come in many types
        raise CnnlabError(f"could not download {url} ({type(err).__name__}); without network, set "
                          f"{MIRROR_ENV} to a folder holding {what}") from None
    return workdir / filename


def _extract(archive: Path, into: Path) -> None:
    try:
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(into, filter="data")  # refuses absolute paths, links out and devices
    except (tarfile.TarError, OSError, EOFError) as err:
        raise CnnlabError(f"{archive}: not a readable .tar.gz ({err}); replace it with the original file") from None


class _ArraysOnly(pickle.Unpickler):
    """CIFAR's python version is pickled, so the format demands unpickling. Only what the original
    files contain is allowed (dicts, lists, strings, numpy arrays); any other global is refused, so a
    doctored file cannot run code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"),
               ("_codecs", "encode")}  # how protocol-2 pickles written by Python 3 spell bytes

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused global {module}.{name}")


def _read_cifar_file(path: Path) -> dict:
    _downloaded(path)
    try:
        with open(path, "rb") as stream:
            blob = _ArraysOnly(stream, encoding="latin1").load()
    except Exception as err:  # refused globals, truncation, garbage: all mean "not an original file"
        raise CnnlabError(f"{path}: not a CIFAR batch file ({type(err).__name__}: {err})") from None
    if not isinstance(blob, dict):
        raise CnnlabError(f"{path}: not a CIFAR batch file (no dictionary inside)")
    return {_text(key): value for key, value in blob.items()}


def _text(value) -> str:
    return value.decode("latin1") if isinstance(value, bytes) else str(value)


def _load_cifar(spec: DatasetSpec, root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    import numpy as np
    names = spec.source.train_list if split == "train" else spec.source.test_list
    label_key = "fine_labels" if spec.source is tvd.CIFAR100 else "labels"
    images, labels = [], []
    for name, _ in names:
        path = root / spec.folder / name
        batch = _read_cifar_file(path)
        try:
            data = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            targets = np.asarray(batch[label_key], dtype=np.int64)
        except (KeyError, ValueError) as err:
            raise CnnlabError(f"{path}: not a CIFAR batch file ({type(err).__name__}: {err})") from None
        if len(data) != len(targets):
            raise CnnlabError(f"{path}: {len(data)} images but {len(targets)} labels")
        images.append(torch.from_numpy(data.copy()))
        labels.append(torch.from_numpy(targets))
    return torch.cat(images).contiguous(), torch.cat(labels)


# --- SVHN (cropped digits, MATLAB files) ---------------------------------------------------------

def _svhn_files(spec: DatasetSpec) -> dict[str, tuple[str, str, str]]:
    """split -> (url, file name, content MD5), from torchvision's list."""
    return {split: tuple(spec.source.split_list[split]) for split in ("train", "test")}


def _fetch_svhn(spec: DatasetSpec, root: Path, mirror: Path | None, verify: bool) -> Path:
    raw = root / spec.folder
    raw.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        workdir = Path(tmp)
        for url, name, md5 in _svhn_files(spec).values():
            if mirror is not None:
                source = mirror / spec.folder / name
                if not source.is_file():
                    raise CnnlabError(f"{MIRROR_ENV}={mirror}: missing {spec.folder}/{name}; copy the original "
                                      f"file there, or unset {MIRROR_ENV} to download it")
            else:
                source = _download_url(url, name, md5, workdir, f"{spec.folder}/{name}")
            if verify:
                _check_md5(source, name, md5)
            _place(source, workdir, raw, name)
    return raw


def _load_svhn(spec: DatasetSpec, root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    import numpy as np
    from scipy.io import loadmat
    path = _downloaded(root / spec.folder / _svhn_files(spec)[split][1])
    try:
        mat = loadmat(path)  # MATLAB v5 arrays: plain data, nothing executable
        images = np.asarray(mat["X"], dtype=np.uint8).transpose(3, 2, 0, 1)   # HWCN -> NCHW
        labels = np.asarray(mat["y"], dtype=np.int64).reshape(-1) % 10        # SVHN writes 0 as 10
    except Exception as err:
        raise CnnlabError(f"{path}: not an SVHN .mat file ({type(err).__name__}: {err})") from None
    if len(images) != len(labels):
        raise CnnlabError(f"{path}: {len(images)} images but {len(labels)} labels")
    return torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels)


# --- folder: the user's own images, train/<class>/* and test/<class>/* ---------------------------

def _image_files(split_dir: Path) -> tuple[list[str], list[tuple[str, int]]]:
    """Class names and (file, class index) as torchvision's ImageFolder finds them."""
    if not split_dir.is_dir():
        raise CnnlabError(f"{split_dir}: missing; data.path must hold train/<class>/ and test/<class>/ folders")
    try:
        classes, index = tvd.folder.find_classes(str(split_dir))
        files = tvd.folder.make_dataset(str(split_dir), index, extensions=tvd.folder.IMG_EXTENSIONS)
    except (FileNotFoundError, RuntimeError) as err:  # no class folders, or a class without images
        raise CnnlabError(f"{split_dir}: {err}".splitlines()[0]) from None
    return classes, files


def _read_image(path: str, read):
    """read(PIL image) for one file; an unreadable file stops with its path."""
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as image:
            return read(image)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise CnnlabError(f"{path}: unreadable image ({type(err).__name__}); fix or remove it") from None


def _decode_images(files: list[tuple[str, int]], image_size: int, mode: str) -> torch.Tensor:
    from PIL import Image
    from torchvision.transforms.functional import pil_to_tensor
    out = torch.empty(len(files), 1 if mode == "L" else 3, image_size, image_size, dtype=torch.uint8)
    for i, (path, _) in enumerate(files):
        out[i] = _read_image(path, lambda image: pil_to_tensor(
            image.convert(mode).resize((image_size, image_size), Image.Resampling.BILINEAR)))
    return out


def _is_grayscale(files: list[tuple[str, int]]) -> bool:
    # opening reads only the header, so this pass costs little beside the decoding
    return all(_read_image(path, lambda image: image.mode in ("1", "L", "I", "I;16", "F")) for path, _ in files)


def _fetch_folder(spec: DatasetSpec, root: Path, path: str | None, image_size: int) -> Path:
    """Decode every image once (ImageFolder's discovery, PIL decoding), resized to image_size:
    grayscale when every image is grayscale, RGB otherwise."""
    if not path:
        raise CnnlabError("params.yaml: data.path must name a folder with train/<class>/ and test/<class>/ "
                          "when data.dataset is folder")
    base = Path(path).expanduser()
    listed = {split: _image_files(base / split) for split in ("train", "test")}
    if listed["train"][0] != listed["test"][0]:
        raise CnnlabError(f"{base}: train/ and test/ have different class folders "
                          f"({', '.join(listed['train'][0])} vs {', '.join(listed['test'][0])})")
    every = listed["train"][1] + listed["test"][1]
    mode = "L" if _is_grayscale(every) else "RGB"
    out = root / spec.folder
    out.mkdir(parents=True, exist_ok=True)
    for split, (_, files) in listed.items():
        images = _decode_images(files, image_size, mode)
        labels = torch.tensor([label for _, label in files], dtype=torch.long)
        torch.save({"images": images, "labels": labels}, out / f"{split}.pt")
    (out / "classes.txt").write_text("\n".join(listed["train"][0]) + "\n")
    return out


def _folder_classes(folder: Path) -> list[str]:
    return _downloaded(folder / "classes.txt").read_text().split("\n")[:-1]


def _load_folder(spec: DatasetSpec, root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    blob = torch.load(_downloaded(root / spec.folder / f"{split}.pt"), weights_only=True)
    return blob["images"], blob["labels"]
