"""Subsample, split and describe a decoded dataset.

Order of operations: optional subset of the training set (first N, or a balanced sample per class),
then a stratified, seeded validation split, then mean/std on the training part only (so validation
and test never leak into the normalisation).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from cnnlab import CnnlabError
from cnnlab.plumbing.timing import timed

CHUNK_BYTES = 8 * 2**20  # image bytes read, hashed, counted or written at a time


class Picked:
    """Images chosen by index from a source (decoded images, a memory map of them), gathered only
    when read: prepare selects its splits without copying them, and save_prepared writes them a
    chunk at a time. Indexing it picks a subset, as indexing a tensor would."""

    def __init__(self, source: torch.Tensor, index: torch.Tensor | None = None):
        self.source = source
        self.index = torch.arange(len(source)) if index is None else index

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, keep) -> "Picked":
        return Picked(self.source, self.index[keep])

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.index), *self.source.shape[1:]))

    def dim(self) -> int:
        return self.source.dim()

    def rows(self, start: int, stop: int) -> torch.Tensor:
        return self.source.index_select(0, self.index[start:stop])

    def tensor(self) -> torch.Tensor:
        """Every picked image in one tensor (small data: tests, benchmarks)."""
        return self.rows(0, len(self))


def chunks(images):
    """(start, uint8 images) for consecutive blocks of about CHUNK_BYTES of a tensor or of Picked images."""
    size = max(1, CHUNK_BYTES // max(1, math.prod(images.shape[1:])))
    for start in range(0, len(images), size):
        yield start, images.rows(start, start + size) if isinstance(images, Picked) else images[start:start + size]


def stratified_subset(images: torch.Tensor, labels: torch.Tensor, n: int, seed: int, what: str, names=None):
    """A seeded random `n` images with every class in its proportion, kept in their original order.
    (Never the first n: a folder lists its images class by class, so those would be a few classes.)"""
    if n > len(labels):
        raise CnnlabError(f"params.yaml: {what} is {n} but the dataset has only {len(labels)} images")
    if n == len(labels):
        return images, labels
    keep, _ = stratified_split(labels, len(labels) - n, seed, what, names)
    return images[keep], labels[keep]


def per_class_sample(images: torch.Tensor, labels: torch.Tensor, per_class: int, num_classes: int,
                     seed: int, names=None):
    """`per_class` images of every class, drawn at random (seeded), kept in their original order."""
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for cls in range(num_classes):
        members = torch.nonzero(labels == cls).flatten()
        if len(members) < per_class:
            raise CnnlabError(f"params.yaml: prepare.samples_per_class is {per_class} but class {name_of(cls, names)} "
                              f"has only {len(members)} training images")
        chosen.append(members[torch.randperm(len(members), generator=generator)[:per_class]])
    index = torch.cat(chosen).sort().values
    return images[index], labels[index]


def thin_classes(images: torch.Tensor, labels: torch.Tensor, fractions: dict[int, float], num_classes: int,
                 seed: int):
    """Keep only a seeded random `fraction` of the images of each listed class (the imbalance study)."""
    if not fractions:
        return images, labels
    bad = [c for c in fractions if c >= num_classes]
    if bad:
        raise CnnlabError(f"params.yaml: prepare.class_fraction names class {bad[0]} but the dataset has "
                          f"classes 0 to {num_classes - 1}")
    generator = torch.Generator().manual_seed(seed)
    keep = torch.ones(len(labels), dtype=torch.bool)
    for cls, fraction in sorted(fractions.items()):
        members = torch.nonzero(labels == cls).flatten()
        dropped = members[torch.randperm(len(members), generator=generator)[round(fraction * len(members)):]]
        keep[dropped] = False
    return images[keep], labels[keep]


def name_of(cls: int, names=None) -> str:
    """A class as the user knows it: its name (a folder's name for the user's own images), else its index."""
    return repr(str(names[cls])) if names is not None and 0 <= cls < len(names) else str(cls)


def stratified_split(labels: torch.Tensor, val_fraction: float | int, seed: int, what: str | None = None,
                     names=None):
    """Index tensors (kept, split off) with each class in the same proportion in both parts.
    val_fraction: a fraction of the images, or (an int) an exact number of images to split off.
    A class too small to split, or a split smaller than the number of classes, stops with one line
    naming the class by its name (`names`)."""
    import math

    from sklearn.model_selection import train_test_split  # here, not at the top: only prepare splits
    everything = torch.arange(len(labels))
    what = what or ("prepare.val_size" if isinstance(val_fraction, int) else "prepare.val_fraction")
    counts = torch.bincount(labels) if len(labels) else torch.zeros(0, dtype=torch.long)
    lone = torch.nonzero(counts == 1).flatten().tolist()
    if lone:
        more = f" (and {len(lone) - 1} more class{'es' * (len(lone) > 2)})" if len(lone) > 1 else ""
        raise CnnlabError(f"prepare: cannot split {len(labels)} images by class ({what}): class "
                          f"{name_of(lone[0], names)}{more} has only 1 image, and each class needs at least 2 "
                          f"(one on each side); add images of it")
    present = int((counts > 0).sum())
    taken = val_fraction if isinstance(val_fraction, int) else math.ceil(val_fraction * len(labels))
    if 0 < len(labels) and (taken < present or len(labels) - taken < present):
        raise CnnlabError(f"params.yaml: {what} splits {len(labels)} images into {len(labels) - taken} and {taken}, "
                          f"but each part needs an image of each of the {present} classes; change {what} "
                          f"(or add images)")
    try:
        train_idx, val_idx = train_test_split(
            everything.numpy(), test_size=val_fraction, random_state=seed, stratify=labels.numpy())
    except ValueError as err:
        raise CnnlabError(f"params.yaml: {what}={val_fraction} cannot split "
                          f"{len(labels)} images by class ({err})") from None
    return torch.from_numpy(train_idx).sort().values, torch.from_numpy(val_idx).sort().values


EXACT_STATS_PIXELS = 2**27  # pixels per channel up to which channel_stats reduces in float64 (1 GiB)


def channel_stats(images) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images, on the 0..1 scale. Up to EXACT_STATS_PIXELS a
    channel: torch's float64 mean and std of the channel, one channel at a time (8 bytes a pixel of one
    channel at the peak). Beyond: the same statistics from each channel's exact histogram, counted a
    chunk at a time (equal to about 1e-9; a size rule, never a memory one, so a dataset gets the same
    numbers on every machine)."""
    pixels_per_channel = len(images) * images.shape[-1] * images.shape[-2]
    if pixels_per_channel > EXACT_STATS_PIXELS:
        return histogram_stats(images)
    mean, std = [], []
    for channel in range(images.shape[1]):
        plane = torch.cat([part[:, channel].reshape(-1) for _, part in chunks(images)]) if len(images) else \
            torch.zeros(0, dtype=torch.uint8)
        pixels = plane.reshape(1, -1).double().div_(255.0)
        mean.append(pixels.mean(dim=1).item())
        std.append(pixels.std(dim=1).item())
    return mean, std


def histogram_stats(images) -> tuple[list[float], list[float]]:
    """channel_stats from exact per-channel counts of each of the 256 values, read a chunk at a time."""
    counts = torch.zeros(images.shape[1], 256, dtype=torch.long)
    for _, part in chunks(images):
        for channel in range(images.shape[1]):
            counts[channel] += torch.bincount(part[:, channel].reshape(-1), minlength=256)
    values = torch.arange(256, dtype=torch.long)
    mean, std = [], []
    for row in counts:
        n, total, squares = int(row.sum()), int((row * values).sum()), int((row * values * values).sum())
        mean.append(total / n / 255.0)
        std.append(math.sqrt((squares * n - total * total) / (n * (n - 1))) / 255.0)  # integers: exact to here
    return mean, std


def check_shapes(train: torch.Tensor, test: torch.Tensor) -> None:
    """Decoded images must be [N, C, H, H] uint8, the same shape in both splits."""
    for split, images in (("train", train), ("test", test)):
        if images.dim() != 4 or images.shape[-1] != images.shape[-2] or images.shape[1] not in (1, 3):
            raise CnnlabError(f"prepare: {split} images have shape {tuple(images.shape[1:])}; expected square "
                              f"images with 1 or 3 channels (C x H x H); check the raw data")
    if train.shape[1:] != test.shape[1:]:
        raise CnnlabError(f"prepare: train images are {tuple(train.shape[1:])} but test images "
                          f"{tuple(test.shape[1:])}; both splits must have the same shape")


def image_hashes(images) -> list[bytes]:
    import hashlib
    return [hashlib.blake2b(row.tobytes(), digest_size=16).digest()
            for _, part in chunks(images) for row in part.reshape(len(part), -1).numpy()]


def drop_duplicates(train: tuple, test: tuple) -> tuple[tuple, dict]:
    """Exact duplicate images (byte for byte, after decoding): a training image that repeats an earlier
    training image, or that is also in the test split, is dropped, so that validation and test never
    score images the model was trained on. Returns the training split and the counts."""
    (images, labels), seen = train, set()
    test_hashes = set(image_hashes(test[0]))
    keep, repeated, in_test = [], 0, 0
    for i, digest in enumerate(image_hashes(images)):
        if digest in test_hashes:
            in_test += 1
        elif digest in seen:
            repeated += 1
        else:
            seen.add(digest)
            keep.append(i)
    counts = {"repeated_in_train": repeated, "train_also_in_test": in_test}
    if len(keep) == len(labels):
        return train, counts
    index = torch.tensor(keep, dtype=torch.long)
    return (images[index], labels[index]), counts


CLASSES_DRAWN = 10  # per-image figures show the first 10 classes (CIFAR-100 would need 100 rows)


def one_per_class(labels: torch.Tensor, per_class: int, num_classes: int, seed: int) -> torch.Tensor:
    """`per_class` test images of each of the first CLASSES_DRAWN classes (seeded), grouped by class."""
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for cls in range(min(num_classes, CLASSES_DRAWN)):
        members = torch.nonzero(labels == cls).flatten()
        chosen.append(members[torch.randperm(len(members), generator=generator)[:per_class]])
    return torch.cat(chosen)


def class_counts(labels: torch.Tensor, num_classes: int) -> list[int]:
    return torch.bincount(labels, minlength=num_classes).tolist()


def carve(data: tuple, fraction: float, seed: int, what: str, names=None) -> tuple[tuple, tuple]:
    """Split a dataset that comes as one set: (the rest, a seeded stratified `fraction`)."""
    images, labels = data
    rest, carved = stratified_split(labels, fraction, seed, what, names)
    return (images[rest], labels[rest]), (images[carved], labels[carved])


def check_distinct(before: list[int], after: list[int], classes) -> None:
    """A class that exact-duplicate removal left with fewer than 2 training images (every image a copy
    of one, or of test images) cannot be split or learned: say so, by the class's name."""
    for cls, (had, kept) in enumerate(zip(before, after)):
        if kept < 2 and kept < had:
            raise CnnlabError(f"prepare: class {name_of(cls, classes)} has {had} training images but {kept} left after "
                              f"dropping exact duplicates ({had - kept} copies of another of its images or of a test "
                              f"image): a class needs at least 2 distinct images; replace the copies with different "
                              f"images of it")


def data_card(splits: dict, classes, found: dict, before: list[int], deduplicated: list[int],
              duplicates: dict) -> dict:
    """What download found and did (`found`: the folder dataset's manifest card; empty for the
    published datasets) and what prepare did: per class, the images found in each split folder and
    those kept in each split; the training images identical (after resizing) to another and dropped
    (per class too); the test images identical to another test image (kept: scored twice); images
    resized."""
    card = dict(found)
    images = splits["train"][0]
    side = int(images.shape[-1])
    if "sizes" in found:  # every image not already side x side was resized
        total = sum(sum(per_split.values()) for per_split in found.get("found", {}).values())
        card["resized"] = total - int(found["sizes"].get("square", {}).get(str(side), 0))
    card["image_size"], card["channels"] = side, int(images.shape[1])
    card["duplicates_dropped"] = {**duplicates, "per_class": {
        str(classes[c]): had - kept for c, (had, kept) in enumerate(zip(before, deduplicated)) if had > kept}}
    test_hashes = image_hashes(splits["test"][0])
    card["repeated_in_test"] = len(test_hashes) - len(set(test_hashes))
    counts = {name: class_counts(splits[name][1], len(classes)) for name in ("train", "val", "test")}
    card["classes"] = {str(name): {split: counts[split][c] for split in counts} for c, name in enumerate(classes)}
    return card


def check_classes(train_labels: torch.Tensor, other: dict[str, torch.Tensor], classes) -> None:
    """A class the model never sees in training cannot be learned: stop rather than report a score
    over the classes it did see."""
    seen = set(train_labels.unique().tolist())
    for split, labels in other.items():
        missing = sorted(set(labels.unique().tolist()) - seen)
        if missing:
            names = ", ".join(str(classes[c]) for c in missing[:5])
            raise CnnlabError(f"prepare: the {split} split has class {names} but the training split has no image "
                              f"of it; use more training images or a balanced subset (prepare.samples_per_class)")


def prepare(train: tuple, test: tuple | None, classes: tuple[str, ...], options: dict, val: tuple | None = None,
            card: dict | None = None) -> dict:
    """select_splits with each split's images gathered into one tensor (small data: tests, benchmarks)."""
    splits = select_splits(train, test, classes, options, val, card)
    for name in SPLITS:
        images, labels = splits[name]
        splits[name] = (images.tensor(), labels)
    return splits


def select_splits(train: tuple, test: tuple | None, classes: tuple[str, ...], options: dict,
                  val: tuple | None = None, card: dict | None = None) -> dict:
    """Return {'train': (x, y), 'val': (x, y), 'test': (x, y), 'info': {...}}, each x Picked from the
    decoded images (nothing copied: save_prepared writes them a chunk at a time).
    test None: the dataset comes as one set, and a seeded stratified `prepare.test_fraction` of it
    becomes the test split; val given: the dataset's own validation split, used instead of carving one.
    card: what download found and did (default: the card `classes` carries, see ClassNames), extended
    into info['card'] (see data_card)."""
    train, test, val = (None if part is None else (Picked(part[0]), part[1]) for part in (train, test, val))
    if test is None:
        train, test = carve(train, options["test_fraction"], options["seed"], "prepare.test_fraction", classes)
    check_shapes(train[0], test[0])
    (train_x, train_y), duplicates = drop_duplicates(train, test)
    before, deduplicated = class_counts(train[1], len(classes)), class_counts(train_y, len(classes))
    check_distinct(before, deduplicated, classes)
    test_x, test_y = test
    if options["train_size"] is not None:
        train_x, train_y = stratified_subset(train_x, train_y, options["train_size"], options["seed"],
                                             "prepare.train_size", classes)
    elif options["samples_per_class"] is not None:
        train_x, train_y = per_class_sample(train_x, train_y, options["samples_per_class"], len(classes),
                                            options["seed"], classes)
    train_x, train_y = thin_classes(train_x, train_y, options.get("class_fraction") or {}, len(classes),
                                    options["seed"])
    if options["test_size"] is not None:
        test_x, test_y = stratified_subset(test_x, test_y, options["test_size"], options["seed"], "prepare.test_size",
                                           classes)
    if val is None:
        (train_x, train_y), val = carve((train_x, train_y), options.get("val_size") or options["val_fraction"],
                                        options["seed"], "prepare.val_size" if options.get("val_size") else None,
                                        classes)
    check_classes(train_y, {"validation": val[1], "test": test_y}, classes)
    splits = {
        "train": (train_x, train_y.contiguous()),
        "val": (val[0], val[1].contiguous()),
        "test": (test_x, test_y.contiguous()),
    }
    mean, std = channel_stats(splits["train"][0])
    if min(std) == 0:
        raise CnnlabError("prepare: the training images are constant (std 0); check the raw data")
    splits["info"] = {
        "classes": list(classes),
        "channels": int(train_x.shape[1]),
        "image_size": int(train_x.shape[-1]),
        "mean": mean,
        "std": std,
        "sizes": {name: len(splits[name][1]) for name in ("train", "val", "test")},
        "class_counts": {name: class_counts(splits[name][1], len(classes)) for name in ("train", "val", "test")},
        "duplicates_dropped": duplicates,
    }
    splits["info"]["card"] = data_card(splits, classes, card if card is not None else getattr(classes, "card", {}),
                                       before, deduplicated, duplicates)
    return splits


SPLITS = ("train", "val", "test")


def split_files(folder, name: str) -> tuple[Path, Path]:
    """A prepared split's two files: images uint8 [N, C, H, W] and labels int64 [N], numpy .npy."""
    return Path(folder) / f"{name}_images.npy", Path(folder) / f"{name}_labels.npy"


def save_prepared(splits: dict, folder) -> None:
    """Each split's images written into a .npy memory map a chunk at a time (from a tensor or
    Picked images), its labels whole, and info.json."""
    import numpy as np
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name in SPLITS:
        images, labels = splits[name]
        images_file, labels_file = split_files(folder, name)
        out = np.lib.format.open_memmap(images_file, mode="w+", dtype=np.uint8, shape=tuple(images.shape))
        for start, part in chunks(images):
            out[start:start + len(part)] = part.numpy()
        out.flush()
        del out  # unmapped: written
        np.save(labels_file, labels.numpy())
    (folder / "info.json").write_text(json.dumps(splits["info"], indent=2) + "\n")


def load_prepared(folder, names=SPLITS) -> dict:
    """{'info': {...}, <split>: (images, labels)} for the asked splits, memory-mapped: a stage reads
    (and the page cache holds) only the images it uses."""
    import numpy as np
    folder = Path(folder)
    try:
        with timed("load"):
            result = {"info": json.loads((folder / "info.json").read_text())}
            for name in names:
                images_file, labels_file = split_files(folder, name)
                # copy-on-write: a tensor over the file without copying it (torch wants a writable
                # array), and nothing written to it ever reaches the file
                images = torch.from_numpy(np.load(images_file, mmap_mode="c", allow_pickle=False))
                result[name] = (images, torch.from_numpy(np.load(labels_file, allow_pickle=False)))
    except FileNotFoundError as err:
        raise CnnlabError(f"{err.filename}: missing; run the prepare stage first (dvc repro prepare)") from None
    return result
