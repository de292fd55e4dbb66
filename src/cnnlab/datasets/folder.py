"""The user's own images. `data.path` holds either `train/<class>/*` (with `test/<class>/*` and
`val/<class>/*` when the user has them; `valid/` or `validation/` count as val/, and the split
folders' names may be in any case), or just `<class>/*`; prepare carves whatever split is missing
(seeded and stratified: `prepare.test_fraction`, `prepare.val_fraction`).

`download` checks every image's header and copies the files, as torchvision's ImageFolder would
find them, into `data/raw/folder/<split>/<class>/` (`all/` for a plain class tree), so that DVC tracks
their content; `prepare` decodes each one once, on every core, resized to `data.image_size`:
grayscale when every image is grayscale, RGB otherwise.

Folders as users really have them: hidden and system entries (`.git/`, `.ipynb_checkpoints/`,
`__MACOSX/`, `.DS_Store`, `._*` AppleDouble files, `Thumbs.db`, `desktop.ini`) are neither classes
nor images; GIF, HEIC, SVG and camera raw files are skipped and counted (and named when a class has
nothing else); images are turned upright by their EXIF orientation; transparency is flattened onto
white; palette, CMYK, 16-bit and multi-page images are converted (the first page used). What was
found and done goes into manifest.json's `card` (download), which prepare extends into its data
card (info.json).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from cnnlab import CnnlabError
from cnnlab.datasets import ClassNames, DatasetSpec
from cnnlab.datasets.files import downloaded, place

SPLITS = ("train", "val", "test")
# the folder names each split goes by (compared in lower case): Kaggle and Roboflow export valid/,
# Keras tutorials validation/
SPLIT_FOLDERS = {"train": ("train", "training"), "val": ("val", "valid", "validation"), "test": ("test", "testing")}
MIN_SIDE = 8  # smaller images hold too little to learn from: refused, never blown up
MANIFEST = "manifest.json"
# the suffixes torchvision's ImageFolder reads (torchvision.datasets.folder.IMG_EXTENSIONS)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# never a class and never an image: what zip tools, Macs, Windows, NAS boxes, Jupyter and git leave
# beside the images (besides every name starting with a dot: .git/, .DS_Store, ._photo.jpg)
SYSTEM_NAMES = frozenset({"__macosx", "__pycache__", "@eadir", "$recycle.bin", "system volume information",
                          "lost+found", "thumbs.db", "ehthumbs.db", "desktop.ini", "icon\r"})
# image files cnnlab does not read: skipped and counted, and named when a class holds nothing else
UNSUPPORTED = {".gif": "gif", ".heic": "heic", ".heif": "heic", ".svg": "svg",
               **dict.fromkeys((".cr2", ".cr3", ".nef", ".arw", ".dng", ".raf", ".orf", ".rw2"), "camera_raw")}
UNSUPPORTED_HINT = {
    "gif": ("GIF", "GIF is not supported (animated or not): convert them to PNG"),
    "heic": ("HEIC/HEIF", "HEIC is not supported: convert them to JPEG"),
    "svg": ("SVG", "SVG is a drawing, not pixels: render them to PNG"),
    "camera_raw": ("camera raw", "camera raw is not supported: export them as JPEG or PNG"),
}
SKIP_REASONS = ("hidden", "not_images", "outside_class_folders", *UNSUPPORTED_HINT)
ORIENTATION = 0x0112  # the EXIF tag; values 2..8 need a flip or a turn (1 is upright)
TRANSPOSING = (5, 6, 7, 8)  # the orientations that turn by 90 degrees: upright, width and height swap
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I", "F")
GRAYSCALE_MODES = ("1", "L", "LA", "La", *HIGH_BIT_MODES)
MAX_LISTED = 50  # ignored folders named in the card at most


def hidden(name: str) -> bool:
    """A hidden or system file or folder: never a class, never an image."""
    return name.startswith(".") or name.lower() in SYSTEM_NAMES


def skip_reason(name: str) -> str | None:
    """Why a file inside a class folder is not read as an image, or None when it is."""
    if hidden(name):
        return "hidden"
    suffix = os.path.splitext(name)[1].lower()
    if suffix in IMAGE_SUFFIXES:
        return None
    return UNSUPPORTED.get(suffix, "not_images")


@dataclass
class Listing:
    """One split folder as torchvision's ImageFolder finds it (its class folders and image suffixes),
    less hidden and system entries."""
    classes: list[str]
    files: list[tuple[str, int]]  # (path, class index)
    skipped: Counter = field(default_factory=Counter)  # reason -> files
    ignored: list[str] = field(default_factory=list)  # hidden and system folders, relative to the split


def _only_unsupported(where: Path, counts: Counter) -> CnnlabError | None:
    kinds = [kind for kind in UNSUPPORTED_HINT if counts[kind]]
    if not kinds:
        return None
    found = " and ".join(f"{counts[kind]} {UNSUPPORTED_HINT[kind][0]} file{'s' * (counts[kind] > 1)}" for kind in kinds)
    return CnnlabError(f"{where}: holds only {found}, no image cnnlab reads; "
                       + "; ".join(UNSUPPORTED_HINT[kind][1] for kind in kinds))


def _class_name(split_dir: Path, name: str) -> str:
    """A class folder's name, which becomes a label in every figure and file: it must be text. A name
    that is not UTF-8 (Latin-1 bytes from an old zip archive) stops here, shown with its bytes escaped."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # the bytes Python could not decode, kept as surrogates
        shown = os.fsencode(name).decode("ascii", "backslashreplace")
        raise CnnlabError(f"{os.path.join(split_dir, shown)}: a class folder whose name is not UTF-8 text; "
                          f"rename it (e.g. with `convmv -f latin1 -t utf8 --notest -r`, or by hand)") from None
    return name


def list_images(split_dir: Path) -> Listing:
    """The classes and images of one split folder, walked without following folder links: a link back
    into the tree would list images twice, and train and test could share them. A linked folder, or a
    linked file that leads outside the split's folder, stops with its path; so does a class folder
    without images."""
    if not split_dir.is_dir():
        raise CnnlabError(f"{split_dir}: missing; data.path must hold train/<class>/ and test/<class>/ folders")
    root = split_dir.resolve()
    listing = Listing([], [])
    loose = 0
    for entry in sorted(os.scandir(split_dir), key=lambda e: e.name):
        if hidden(entry.name):
            if entry.is_dir():
                listing.ignored.append(entry.name)
            else:
                listing.skipped["hidden"] += 1
        elif entry.is_dir():
            listing.classes.append(_class_name(split_dir, entry.name))
        else:
            reason = skip_reason(entry.name)
            loose += reason is None
            listing.skipped[reason or "outside_class_folders"] += 1
    if not listing.classes:
        if loose:
            raise CnnlabError(f"{split_dir}: {loose} image{'s' * (loose > 1)} but no class folders; put each class's "
                              f"images in a folder named after the class ({split_dir}/<class>/<image>)")
        raise CnnlabError(f"{split_dir}: no class folders (expected {split_dir}/<class>/<image>)")
    empty = []
    for index, name in enumerate(listing.classes):
        found, skipped, walked = [], Counter(), []
        for folder, subfolders, names in os.walk(split_dir / name):
            for sub in list(subfolders):
                if hidden(sub):
                    subfolders.remove(sub)  # not walked
                    listing.ignored.append(str((Path(folder) / sub).relative_to(split_dir)))
                elif (Path(folder) / sub).is_symlink():
                    raise CnnlabError(f"{Path(folder) / sub}: a linked folder (it could list images twice "
                                      f"or reach outside data.path); copy the images instead")
            walked.append((folder, names))
        for folder, names in sorted(walked):  # ImageFolder's order
            for file in sorted(names):
                path = Path(folder) / file
                reason = skip_reason(file)
                if reason:
                    skipped[reason] += 1
                    continue
                if path.is_symlink() and not path.resolve().is_relative_to(root):
                    raise CnnlabError(f"{path}: links to {path.resolve()}, outside {split_dir}; copy the image instead")
                found.append((str(path), index))
        listing.skipped += skipped
        listing.files += found
        if not found:
            empty.append((name, skipped))
    if empty:
        everything = _only_unsupported(split_dir, listing.skipped) if not listing.files else None
        name, skipped = empty[0]
        raise everything or _only_unsupported(split_dir / name, skipped) or CnnlabError(
            f"{split_dir / name}: no images ({', '.join(IMAGE_SUFFIXES[:4])}, ...); add images of this class "
            f"or remove the folder")
    return listing


def _same_names(a: list[str], b: list[str]) -> bool:
    import unicodedata
    return bool(a) and sorted(unicodedata.normalize("NFC", n) for n in a) == sorted(unicodedata.normalize("NFC", n)
                                                                                   for n in b)


def layout(base: Path) -> dict[str, Path]:
    """split -> its folder: train/ (test/, val/) when there is a train/, else the whole tree as `all`.
    Two folders for one split (val/ and valid/), split folders without train/, or another folder
    beside train/ stop with one line: each would otherwise be silently left out or read as a class."""
    named: dict[str, list[str]] = {}
    others = []
    for entry in sorted(os.scandir(base), key=lambda e: e.name):
        if not entry.is_dir() or hidden(entry.name):
            continue
        split = next((s for s, names in SPLIT_FOLDERS.items() if entry.name.lower() in names), None)
        if split:
            named.setdefault(split, []).append(entry.name)
        else:
            others.append(entry.name)
    if not named:
        return {"all": base}
    for split, names in named.items():
        if len(names) > 1:
            raise CnnlabError(f"{base}: {' and '.join(n + '/' for n in names)} are both the {split} split; pick one "
                              f"(merge them, or move the other out of data.path)")
    if "train" not in named:
        found = ", ".join(named[split][0] + "/" for split in SPLITS if split in named)
        raise CnnlabError(f"{base}: has {found} but no train/ folder; put the training images in {base}/train/<class>/ "
                          f"(a plain <class>/ tree cannot have classes named like split folders: rename them)")
    if others:
        splits = ", ".join("/".join(names) + "/" for names in SPLIT_FOLDERS.values())
        raise CnnlabError(f"{base / others[0]}: a folder beside {named['train'][0]}/ that is not a split ({splits}); "
                          f"move it into {named['train'][0]}/ if it is a class, or out of data.path")
    return {split: base / named[split][0] for split in SPLITS if split in named}


def fetch(spec: DatasetSpec, root: Path, mirror, verify: bool, path: str | None) -> Path:
    if not path:
        raise CnnlabError("params.yaml: data.path must name a folder of images (<class>/* or train/<class>/*) "
                          "when data.dataset is folder")
    base = Path(path).expanduser()
    if not base.is_dir():
        raise CnnlabError(f"{base}: data.path is not a folder")
    folders = layout(base)
    listed = {split: list_images(folder) for split, folder in folders.items()}
    first = next(iter(listed))
    classes = listed[first].classes
    if len(classes) < 2:
        ignored = [name for name in listed[first].ignored if "/" not in name]
        raise CnnlabError(f"{folders[first]}: only one class folder ({classes[0]}"
                          + (f"; ignored as hidden or system: {', '.join(ignored)}" if ignored else "")
                          + "); a classifier needs at least 2 classes: add a folder of images for each other class")
    for split, listing in listed.items():
        if listing.classes != classes:
            lacks = [c for c in classes if c not in listing.classes]
            extra = [c for c in listing.classes if c not in classes]
            raise CnnlabError(f"{base}: {folders[first].name}/ and {folders[split].name}/ have different class folders ("
                              + "; ".join(part for part in (
                                  f"{folders[split].name}/ lacks {', '.join(lacks)}" if lacks else "",
                                  f"{folders[split].name}/ has {', '.join(extra)}, which {folders[first].name}/ lacks"
                                  if extra else "") if part)
                              + "); every split needs the same class folders"
                              + ("; the names differ only in their Unicode form (as a Mac may write accented "
                                 "letters): rename them in one split" if _same_names(lacks, extra) else ""))
    seen = Counter()
    modes = Counter()
    squares = Counter()
    smallest = largest = None
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        for split, listing in listed.items():
            for file, _ in listing.files:
                # an unreadable, oversized, tiny or GIF-in-disguise image stops here
                mode, rotated, frames, alpha, (width, height) = read_image(file, _header)
                modes[mode] += 1
                seen["rotated"] += rotated
                seen["multi_frame"] += frames > 1
                seen["alpha"] += alpha
                if width == height:
                    squares[str(width)] += 1
                smallest = min(smallest or (width, height), (width, height), key=lambda s: s[0] * s[1])
                largest = max(largest or (width, height), (width, height), key=lambda s: s[0] * s[1])
                place(Path(file), Path(tmp), root / spec.folder / split / Path(file).relative_to(folders[split]))
    grayscale = all(mode in GRAYSCALE_MODES for mode in modes)
    counts = {split: Counter(index for _, index in listing.files) for split, listing in listed.items()}
    skipped = sum((listing.skipped for listing in listed.values()), Counter())
    ignored = {f"{folders[split].name}/{name}" if split != "all" else name
               for split, listing in listed.items() for name in listing.ignored}
    if "all" not in folders:  # beside the split folders: hidden folders, notes, a labels.csv, ...
        for entry in os.scandir(base):
            if entry.is_dir() and hidden(entry.name):
                ignored.add(entry.name)
            elif not entry.is_dir():  # as inside the split folders: an image is outside, a labels.csv not one
                skipped[skip_reason(entry.name) or "outside_class_folders"] += 1
    card = {
        "source": str(base),
        "split_folders": {split: folder.name if split != "all" else "." for split, folder in folders.items()},
        "found": {name: {split: counts[split][index] for split in listed} for index, name in enumerate(classes)},
        "skipped": {reason: skipped[reason] for reason in SKIP_REASONS},
        "ignored_folders": sorted(ignored)[:MAX_LISTED],
        "rotated": seen["rotated"],
        "converted": {
            "alpha_flattened_on_white": seen["alpha"],
            "palette_to_rgb": modes["P"] + modes["PA"],
            "cmyk_to_rgb": modes["CMYK"],
            "high_bit_depth_to_8_bit": sum(modes[m] for m in HIGH_BIT_MODES),
            "one_bit_to_8_bit": modes["1"],
            "other_colour_space_to_rgb": sum(n for m, n in modes.items() if m in ("YCbCr", "LAB", "HSV")),
            "grayscale_to_rgb": 0 if grayscale else sum(modes[m] for m in GRAYSCALE_MODES),
            "first_frame_of_multi_frame": seen["multi_frame"],
        },
        "sizes": {"smallest": "x".join(map(str, smallest)), "largest": "x".join(map(str, largest)),
                  "square": dict(sorted(squares.items(), key=lambda item: int(item[0])))},
    }
    (root / spec.folder / MANIFEST).write_text(json.dumps({
        "splits": list(listed), "classes": classes, "grayscale": grayscale,
        "skipped_not_images": sum(skipped.values()),
        "images": {split: len(listing.files) for split, listing in listed.items()},
        "source": card["source"], "folders": card["split_folders"], "card": card}, indent=2) + "\n")
    return root / spec.folder


class BadImage(CnnlabError):
    """An image file that cannot be used: its path, why, and what to do."""

    def __init__(self, path: str, why: str, fix: str = "fix or remove it"):
        super().__init__(f"{path}: {why}; {fix}")
        self.path, self.why, self.fix = str(path), why, fix


class _Refused(ValueError):
    def __init__(self, why: str, fix: str):
        super().__init__(why)
        self.why, self.fix = why, fix


def orientation(image, header_only: bool = False) -> int:
    """The EXIF orientation (1: upright). header_only: never decode for it (a PNG may keep its EXIF
    after the pixels; PIL would decode the whole image to find it)."""
    if header_only and image.format == "PNG" and "exif" not in image.info:
        return 1
    try:
        value = image.getexif().get(ORIENTATION, 1)
    except (OSError, ValueError, SyntaxError, TypeError, KeyError, IndexError):
        return 1  # a broken EXIF block: the pixels are still there, upright as stored
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def big_enough(image):
    """The image, unless it is smaller than MIN_SIDE on a side (refused, never blown up)."""
    if min(image.size) < MIN_SIDE:
        raise _Refused(f"too small to learn from ({image.size[0]}x{image.size[1]} pixels, smaller than "
                       f"{MIN_SIDE}x{MIN_SIDE})", "remove it")
    return image


def _header(image) -> tuple:
    """(mode, needs turning upright, frames, has transparency, size) from a file's header."""
    big_enough(image)
    if image.format == "GIF":
        raise _Refused("a GIF image under another name; GIF is not supported", "convert it to PNG")
    frames = getattr(image, "n_frames", 1) if image.format in ("TIFF", "PNG", "WEBP") else 1  # not MPO's previews
    alpha = image.mode in ALPHA_MODES or "transparency" in image.info
    turn = orientation(image, header_only=True)
    upright_size = image.size[::-1] if turn in TRANSPOSING else image.size
    return image.mode, turn != 1, frames, alpha, upright_size


def _cause(err: Exception, path: str) -> str:
    text = (str(err).splitlines() or [""])[0].replace(str(path), "the file")
    if isinstance(err, EOFError) or "truncated" in text.lower():
        return "truncated: the file ends before the image does"
    if "broken data stream" in text.lower():
        return "corrupt: its compressed data is broken"
    return f"{type(err).__name__}: {text[:120]}" if text else type(err).__name__


def read_image(path: str, read):
    """read(PIL image) for one file; an unreadable file, or one larger than PIL's decompression-bomb
    limit (about 179 million pixels), stops with its path (BadImage)."""
    import struct
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as image:
            return read(image)
    except _Refused as err:
        raise BadImage(path, err.why, err.fix) from None
    except Image.DecompressionBombError as err:
        raise BadImage(path, f"too large to decode safely ({err}".split(" could be")[0] + ")", "shrink or remove it") \
            from None
    except UnidentifiedImageError:
        empty = os.path.exists(path) and os.path.getsize(path) == 0
        raise BadImage(path, "unreadable image (" + ("an empty file, 0 bytes" if empty else
                       "not an image: its content is no format PIL reads, whatever its name says") + ")") from None
    except (OSError, ValueError, SyntaxError, EOFError, struct.error, IndexError) as err:
        raise BadImage(path, f"unreadable image ({_cause(err, path)})") from None


def to_8bit(image):
    """16-bit and float grayscale scaled to 0..255 (PIL's own conversion clips them to 0 or 255)."""
    import numpy as np
    from PIL import Image
    if image.mode not in HIGH_BIT_MODES:
        return image
    values = np.asarray(image, dtype=np.float64)
    top = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
    return Image.fromarray(np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")


def flatten(image):
    """Transparency composited onto white (RGB): dropping the alpha channel would show whatever colour
    the transparent pixels happen to hold, often black."""
    from PIL import Image
    if image.mode in HIGH_BIT_MODES or (image.mode not in ALPHA_MODES and "transparency" not in image.info):
        return image
    white = Image.new("RGBA", image.size, (255, 255, 255, 255))
    white.alpha_composite(image.convert("RGBA"))
    return white.convert("RGB")


def upright(image):
    """The image as it is meant to be seen: turned or flipped by its EXIF orientation (cameras and
    phones store the sensor's rows and a tag saying how to turn them)."""
    if orientation(image) == 1:
        return image
    from PIL import ImageOps
    return ImageOps.exif_transpose(image)


def pixels(image, mode: str, size: int):
    """One image as uint8 [size, size] (L) or [size, size, 3] (RGB): upright, flattened, 8-bit,
    converted, resized (bilinear). The first frame of a multi-frame file (PIL opens at it)."""
    import numpy as np
    from PIL import Image
    image = flatten(to_8bit(upright(image)))
    return np.asarray(image.convert(mode).resize((size, size), Image.Resampling.BILINEAR))


def decode_files(files: list[str], mode: str, size: int):
    """Decode image files to uint8 [n, C, size, size]: 8-bit, `mode` (L or RGB), resized (bilinear).
    The one decoding of the user's images: for training (in worker processes) and for predict."""
    import numpy as np
    out = np.empty((len(files), 1 if mode == "L" else 3, size, size), dtype=np.uint8)
    for i, file in enumerate(files):
        array = read_image(file, lambda image: pixels(big_enough(image), mode, size))
        out[i] = array[None] if mode == "L" else array.transpose(2, 0, 1)
    return out


def _decode_job(job: tuple[list[str], str, int]):
    """One chunk in a worker: (images, None), or (None, (path, why, fix)) for a file that cannot be
    decoded: a problem comes back as a value, for the parent to report as one line, never as a
    traceback from the worker."""
    try:
        return decode_files(*job), None
    except BadImage as err:
        return None, (err.path, err.why, err.fix)


def _quiet_worker() -> None:
    """Workers leave interrupts to the parent: Ctrl-C reaches the whole process group, and the pool
    ends its workers with SIGTERM, which the stage's own handler (inherited by fork) would turn into
    a KeyboardInterrupt traceback from each worker, or a worker stuck holding the pool's queue lock."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def manifest(root: Path, spec: DatasetSpec) -> dict:
    return json.loads(downloaded(root / spec.folder / MANIFEST).read_text())


def splits(spec: DatasetSpec, root: Path) -> tuple[str, ...]:
    return tuple(manifest(root, spec)["splits"])


def original(found: dict, raw_split: Path, split: str, path: str) -> str:
    """The user's file (under data.path) that download copied to `path` in data/raw."""
    folder = found.get("folders", {}).get(split)
    if "source" not in found or folder is None:
        return path  # a manifest from before the source was recorded
    return str(Path(found["source"]) / folder / Path(path).relative_to(raw_split))


def workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


CHUNK = 256  # images per job at most
JOB_BYTES = 16 * 2**20  # and decoded bytes per job at most: a worker's result is copied through a pipe


def scratch_images(where: Path, shape: tuple[int, ...]):
    """A uint8 tensor of `shape` over an unnamed temporary file in `where` (on disk, not in memory):
    the kernel keeps in memory only the pages in use, and deletes the file when the tensor goes."""
    import math
    import shutil
    import numpy as np
    import torch
    needed, free = math.prod(shape), shutil.disk_usage(where).free
    if needed > free:
        raise CnnlabError(f"{where}: decoding needs {needed / 2**30:,.1f} GiB of disk but only "
                          f"{free / 2**30:,.1f} GiB is free; free some space or use a smaller data.image_size")
    with tempfile.TemporaryFile(dir=where) as file:  # the map keeps the file open; the name is gone
        return torch.from_numpy(np.memmap(file, dtype=np.uint8, mode="w+", shape=shape))


def in_waves(pool, jobs: list, wave: int):
    """The decoded chunks in order, at most `wave` jobs in flight: imap alone takes in every chunk as
    the workers finish it, however far ahead of the parent's writing they run."""
    for start in range(0, len(jobs), wave):
        yield from pool.imap(_decode_job, jobs[start:start + wave])


def decode(spec: DatasetSpec, root: Path, split: str, image_size: int):
    """Decode one split on every core (a pool of worker processes, each a chunk of files at a time)
    into a memory map on disk beside data/raw, so a folder larger than memory decodes, with a
    progress bar when run in a terminal. A file that cannot be decoded stops with the path of the
    user's own file (not of its copy in data/raw)."""
    import multiprocessing
    import torch
    from tqdm import tqdm
    folder = downloaded(root / spec.folder)
    found = manifest(root, spec)
    mode = "L" if found["grayscale"] else "RGB"
    listing = list_images(folder / split)
    if listing.classes != found["classes"]:
        raise CnnlabError(f"{folder / split}: its class folders are not the ones {MANIFEST} lists; "
                          f"run `dvc repro -f download`")
    files = listing.files
    images = scratch_images(root.parent, (len(files), 1 if mode == "L" else 3, image_size, image_size))
    chunk = max(1, min(CHUNK, JOB_BYTES // (images[0].numel() if len(images) else 1)))
    jobs = [([file for file, _ in files[i:i + chunk]], mode, image_size) for i in range(0, len(files), chunk)]
    # fork: workers start at once and only use PIL and numpy, never torch
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
    processes = min(workers(), max(1, len(jobs)))
    with context.Pool(processes, initializer=_quiet_worker) as pool, \
            tqdm(total=len(files), desc=f"decoding {split} images", unit="image", disable=None, leave=False) as bar:
        for i, (array, problem) in enumerate(in_waves(pool, jobs, 2 * processes)):
            if problem:
                path, why, fix = problem
                raise CnnlabError(f"{original(found, folder / split, split, path)}: {why}; {fix}, then run "
                                  f"`dvc repro -f download` (prepare reads the copy in data/raw)")
            images[i * chunk:i * chunk + len(array)] = torch.from_numpy(array)
            bar.update(len(array))
    return images, torch.tensor([label for _, label in files], dtype=torch.long)


def classes(spec: DatasetSpec, root: Path) -> ClassNames:
    """The class names, carrying download's data card for prepare to extend."""
    found = manifest(root, spec)
    return ClassNames(found["classes"], found.get("card"))
