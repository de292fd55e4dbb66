"""The user's own images. `data.path` holds either `train/<class>/*` (with `test/<class>/*` and
`val/<class>/*` when the user has them), or just `<class>/*`; prepare carves whatever split is
missing (seeded and stratified: `prepare.test_fraction`, `prepare.val_fraction`).

`download` checks every image's header and copies the files, as torchvision's ImageFolder would
find them, into `data/raw/folder/<split>/<class>/` (`all/` for a plain class tree), so that DVC tracks
their content; `prepare` decodes each one once, on every core, resized to `data.image_size`:
grayscale when every image is grayscale, RGB otherwise.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from cnnlab import CnnlabError
from cnnlab.datasets import DatasetSpec
from cnnlab.datasets.files import downloaded, place
from cnnlab.runtime import check_memory

SPLITS = ("train", "val", "test")
MIN_SIDE = 8  # smaller images hold too little to learn from: refused, never blown up
MANIFEST = "manifest.json"
# the suffixes torchvision's ImageFolder reads (torchvision.datasets.folder.IMG_EXTENSIONS)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def _image_files(split_dir: Path) -> tuple[list[str], list[tuple[str, int]], int]:
    """Class names, (file, class index) and the number of files skipped as not images, as torchvision's ImageFolder finds them (its class
    folders and image extensions), but walked without following folder links: a link back into the
    tree would list images twice, and train and test could share them. A linked folder, or a linked
    file that leads outside the split's folder, stops with its path."""
    import os
    if not split_dir.is_dir():
        raise CnnlabError(f"{split_dir}: missing; data.path must hold train/<class>/ and test/<class>/ folders")
    root = split_dir.resolve()
    classes = sorted(entry.name for entry in os.scandir(split_dir) if entry.is_dir())
    if not classes:
        raise CnnlabError(f"{split_dir}: no class folders (expected {split_dir}/<class>/<image>)")
    files, skipped = [], 0
    for index, name in enumerate(classes):
        found = []
        for folder, subfolders, names in sorted(os.walk(split_dir / name)):  # ImageFolder's order
            for sub in subfolders:
                if (Path(folder) / sub).is_symlink():
                    raise CnnlabError(f"{Path(folder) / sub}: a linked folder (it could list images twice "
                                      f"or reach outside data.path); copy the images instead")
            for file in sorted(names):
                path = Path(folder) / file
                if path.suffix.lower() not in IMAGE_SUFFIXES:
                    skipped += 1  # notes, thumbnails databases, ...: not images, counted
                    continue
                if path.is_symlink() and not path.resolve().is_relative_to(root):
                    raise CnnlabError(f"{path}: links to {path.resolve()}, outside {split_dir}; copy the image instead")
                found.append((str(path), index))
        if not found:
            raise CnnlabError(f"{split_dir / name}: no images ({', '.join(IMAGE_SUFFIXES[:4])}, ...)")
        files += found
    return classes, files, skipped


def layout(base: Path) -> dict[str, Path]:
    """split -> its folder: train/ (test/, val/) when there is a train/, else the whole tree as `all`."""
    if (base / "train").is_dir():
        return {split: base / split for split in SPLITS if (base / split).is_dir()}
    return {"all": base}


def fetch(spec: DatasetSpec, root: Path, mirror, verify: bool, path: str | None) -> Path:
    if not path:
        raise CnnlabError("params.yaml: data.path must name a folder of images (<class>/* or train/<class>/*) "
                          "when data.dataset is folder")
    base = Path(path).expanduser()
    if not base.is_dir():
        raise CnnlabError(f"{base}: data.path is not a folder")
    folders = layout(base)
    listed = {split: _image_files(folder) for split, folder in folders.items()}
    first = next(iter(listed))
    for split, (names, _, _) in listed.items():
        if names != listed[first][0]:
            raise CnnlabError(f"{base}: {first}/ and {split}/ have different class folders "
                              f"({', '.join(listed[first][0])} vs {', '.join(names)})")
    grayscale = True
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        for split, (_, files, _) in listed.items():
            for file, _ in files:
                mode = read_image(file, _header)  # an unreadable, oversized or tiny image stops here
                grayscale = grayscale and mode in GRAYSCALE_MODES
                place(Path(file), Path(tmp), root / spec.folder / split / Path(file).relative_to(folders[split]))
    skipped = sum(count for _, _, count in listed.values())
    (root / spec.folder / MANIFEST).write_text(json.dumps({
        "splits": list(listed), "classes": listed[first][0], "grayscale": grayscale, "skipped_not_images": skipped,
        "images": {split: len(files) for split, (_, files, _) in listed.items()}}, indent=2) + "\n")
    return root / spec.folder


GRAYSCALE_MODES = ("1", "L", "I", "I;16", "I;16B", "I;16L", "F")


class _TooSmall(ValueError):
    pass


def _header(image) -> str:
    if min(image.size) < MIN_SIDE:
        raise _TooSmall(f"{image.size[0]}x{image.size[1]} pixels, smaller than {MIN_SIDE}x{MIN_SIDE}")
    return image.mode


def read_image(path: str, read):
    """read(PIL image) for one file; an unreadable file, or one larger than PIL's decompression-bomb
    limit (about 179 million pixels), stops with its path."""
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as image:
            return read(image)
    except _TooSmall as err:
        raise CnnlabError(f"{path}: too small to learn from ({err}); remove it") from None
    except Image.DecompressionBombError as err:
        raise CnnlabError(f"{path}: too large to decode safely ({err}".split(" could be")[0] + ")") from None
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise CnnlabError(f"{path}: unreadable image ({type(err).__name__}); fix or remove it") from None


def to_8bit(image):
    """16-bit and float grayscale scaled to 0..255 (PIL's own conversion clips them to 0 or 255)."""
    import numpy as np
    from PIL import Image
    if image.mode not in ("I;16", "I;16B", "I;16L", "I", "F"):
        return image
    values = np.asarray(image, dtype=np.float64)
    top = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
    return Image.fromarray(np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")


def manifest(root: Path, spec: DatasetSpec) -> dict:
    return json.loads(downloaded(root / spec.folder / MANIFEST).read_text())


def splits(spec: DatasetSpec, root: Path) -> tuple[str, ...]:
    return tuple(manifest(root, spec)["splits"])


def decode_files(files: list[str], mode: str, size: int):
    """Decode image files to uint8 [n, C, size, size]: 8-bit, `mode` (L or RGB), resized (bilinear).
    The one decoding of the user's images: for training (in worker processes) and for predict."""
    import numpy as np
    from PIL import Image
    out = np.empty((len(files), 1 if mode == "L" else 3, size, size), dtype=np.uint8)
    for i, file in enumerate(files):
        array = read_image(file, lambda image: np.asarray(
            to_8bit(image).convert(mode).resize((size, size), Image.Resampling.BILINEAR)))
        out[i] = array[None] if mode == "L" else array.transpose(2, 0, 1)
    return out


def _decode_job(job: tuple[list[str], str, int]):
    return decode_files(*job)  # one picklable argument for Pool.imap, which runs it in a worker


def workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def decode(spec: DatasetSpec, root: Path, split: str, image_size: int):
    """Decode one split on every core (a pool of worker processes, each a chunk of files at a time),
    with a progress bar when run in a terminal."""
    import multiprocessing
    import torch
    from tqdm import tqdm
    folder = downloaded(root / spec.folder)
    mode = "L" if manifest(root, spec)["grayscale"] else "RGB"
    _, files, _ = _image_files(folder / split)
    check_memory(len(files) * (1 if mode == "L" else 3) * image_size * image_size,
                 f"decoding {len(files):,} {split} images at data.image_size {image_size}")
    images = torch.empty(len(files), 1 if mode == "L" else 3, image_size, image_size, dtype=torch.uint8)
    chunk = 256
    jobs = [([file for file, _ in files[i:i + chunk]], mode, image_size) for i in range(0, len(files), chunk)]
    # fork: workers start at once and only use PIL and numpy, never torch
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
    with context.Pool(min(workers(), max(1, len(jobs)))) as pool, \
            tqdm(total=len(files), desc=f"decoding {split} images", unit="image", disable=None, leave=False) as bar:
        for i, array in enumerate(pool.imap(_decode_job, jobs)):
            images[i * chunk:i * chunk + len(array)] = torch.from_numpy(array)
            bar.update(len(array))
    return images, torch.tensor([label for _, label in files], dtype=torch.long)


def classes(spec: DatasetSpec, root: Path) -> tuple[str, ...]:
    return tuple(manifest(root, spec)["classes"])
