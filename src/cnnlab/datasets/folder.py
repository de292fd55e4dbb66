"""The user's own images: `data.path` holds `train/<class>/*` and `test/<class>/*` (PNG, JPEG, ...).

`download` copies the image files, as torchvision's ImageFolder finds them, into
`data/raw/folder/{train,test}/<class>/`, so that DVC tracks their content; `prepare` decodes each once
and resizes it to `data.image_size`: grayscale when every image is grayscale, RGB otherwise.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from cnnlab import CnnlabError
from cnnlab.datasets import DatasetSpec
from cnnlab.datasets.files import downloaded, place
from cnnlab.runtime import check_memory

SPLITS = ("train", "test")
# the suffixes torchvision's ImageFolder reads (torchvision.datasets.folder.IMG_EXTENSIONS)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def _image_files(split_dir: Path) -> tuple[list[str], list[tuple[str, int]]]:
    """Class names and (file, class index), as torchvision's ImageFolder finds them (its class
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
    files = []
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
                    continue
                if path.is_symlink() and not path.resolve().is_relative_to(root):
                    raise CnnlabError(f"{path}: links to {path.resolve()}, outside {split_dir}; copy the image instead")
                found.append((str(path), index))
        if not found:
            raise CnnlabError(f"{split_dir / name}: no images ({', '.join(IMAGE_SUFFIXES[:4])}, ...)")
        files += found
    return classes, files


def fetch(spec: DatasetSpec, root: Path, mirror, verify: bool, path: str | None) -> None:
    if not path:
        raise CnnlabError("params.yaml: data.path must name a folder with train/<class>/ and test/<class>/ "
                          "when data.dataset is folder")
    base = Path(path).expanduser()
    listed = {split: _image_files(base / split) for split in SPLITS}
    if listed["train"][0] != listed["test"][0]:
        raise CnnlabError(f"{base}: train/ and test/ have different class folders "
                          f"({', '.join(listed['train'][0])} vs {', '.join(listed['test'][0])})")
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        for split, (_, files) in listed.items():
            for file, _ in files:
                read_image(file, lambda image: image.size)  # the header: an unreadable file stops here
                place(Path(file), Path(tmp), root / spec.folder / Path(file).relative_to(base))
    return root / spec.folder


def read_image(path: str, read):
    """read(PIL image) for one file; an unreadable file, or one larger than PIL's decompression-bomb
    limit (about 179 million pixels), stops with its path."""
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as image:
            return read(image)
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


def _is_grayscale(root: Path) -> bool:
    # opening reads only the header, so this pass costs little beside the decoding
    return all(read_image(file, lambda image: image.mode in ("1", "L", "I", "I;16", "F"))
               for split in SPLITS for file, _ in _image_files(root / split)[1])


def decode(spec: DatasetSpec, root: Path, split: str, image_size: int):
    import torch
    from PIL import Image
    from torchvision.transforms.functional import pil_to_tensor
    folder = downloaded(root / spec.folder)
    mode = "L" if _is_grayscale(folder) else "RGB"
    _, files = _image_files(folder / split)
    check_memory(len(files) * (1 if mode == "L" else 3) * image_size * image_size,
                 f"decoding {len(files):,} {split} images at data.image_size {image_size}")
    images = torch.empty(len(files), 1 if mode == "L" else 3, image_size, image_size, dtype=torch.uint8)
    for i, (file, _) in enumerate(files):
        images[i] = read_image(file, lambda image: pil_to_tensor(
            to_8bit(image).convert(mode).resize((image_size, image_size), Image.Resampling.BILINEAR)))
    return images, torch.tensor([label for _, label in files], dtype=torch.long)


def classes(spec: DatasetSpec, root: Path) -> tuple[str, ...]:
    return tuple(_image_files(downloaded(root / spec.folder) / "train")[0])
