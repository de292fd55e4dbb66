"""Images/s of batch gathering, the data path of training: DeviceSplit's shuffled batches (gathered by
index and normalised) of a prepared training split held in memory or memory-mapped from
data/prepared, with the page cache warm and cold; then, for a split of large images (generated:
256x256 colour, 192 KiB a row), cold reads from the map with and without the train stage's readahead.

    dvc repro prepare && python benchmarks/gather.py        # MNIST: about 40 s on 2 CPU cores

The machine's speed drifts (a shared VM), so the cases alternate over ROUNDS rounds and the median and
the best of each are reported. Cold: the split's pages are dropped from the page cache before the pass (posix_fadvise DONTNEED on the
file, which drops clean unmapped pages of this file only, then /proc/sys/vm/drop_caches where this
user may write it). Prints one line per case and writes benchmarks/results/gather.json.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cnnlab.engine.batches import DeviceSplit
from cnnlab.train import readahead
from cnnlab.prepare import load_prepared, split_files
from cnnlab.runtime import device_name

REPO = Path(__file__).resolve().parents[1]
PREPARED = REPO / "data" / "prepared"
BATCH, ROUNDS = 128, 7
LARGE = (2000, 3, 256, 256)  # 375 MiB of 192 KiB rows


def drop_cached(path: Path) -> str:
    """Drop `path`'s pages from the page cache; how it was done."""
    with open(path, "rb") as file:
        os.posix_fadvise(file.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    try:
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
        return "posix_fadvise(DONTNEED) and drop_caches"
    except OSError:
        return "posix_fadvise(DONTNEED) only (drop_caches not writable)"


def one_pass(split: DeviceSplit) -> float:
    """Images/s of one shuffled epoch of batches."""
    start = time.perf_counter()
    for images, _ in split.batches(BATCH, torch.Generator().manual_seed(0)):
        images.sum()  # the batch is used, as a model would use it
    return len(split) / (time.perf_counter() - start)


def measure(mapped: bool, cold: bool) -> tuple[float, str]:
    how = ""
    if cold:
        how = drop_cached(split_files(PREPARED, "train")[0])
    data = load_prepared(PREPARED, ("train",))
    images, labels = data["train"]
    if not mapped:
        images = images.clone()  # read whole into memory (excluded from the timing)
    split = DeviceSplit(images, labels, data["info"]["mean"], data["info"]["std"], torch.device("cpu"))
    return one_pass(split), how


def measure_large(file: Path, ahead: bool) -> float:
    """Images/s of a cold shuffled pass over the large rows, read ahead or not."""
    drop_cached(file)
    images = torch.from_numpy(np.load(file, mmap_mode="c"))
    split = DeviceSplit(images, torch.zeros(len(images), dtype=torch.long), [0.5] * 3, [0.25] * 3,
                        torch.device("cpu"), readahead=readahead.for_split(file) if ahead else None)
    return one_pass(split)


def main() -> None:
    cpu = device_name(torch.device("cpu"))
    results = {"cpu": cpu, "threads": torch.get_num_threads(), "batch_size": BATCH, "rounds": ROUNDS, "cases": {}}
    cases = [("memory", False, False), ("map, warm", True, False), ("map, cold", True, True)]
    large = ["192 KiB rows, map, cold", "192 KiB rows, map, cold, readahead"]
    rates = {name: [] for name in [c[0] for c in cases] + large}
    measure(True, False)  # warm the page cache and the code
    with tempfile.TemporaryDirectory(dir=REPO) as scratch:  # on the disk data/prepared is on
        file = Path(scratch) / "large_images.npy"
        with open(file, "wb") as out:
            np.save(out, np.random.default_rng(0).integers(0, 256, LARGE, dtype=np.uint8))
            os.fsync(out.fileno())  # on disk, so that dropping its pages leaves them cold
        for _ in range(ROUNDS):  # interleaved: the machine's speed drifts
            for name, mapped, cold in cases:
                rate, how = measure(mapped, cold)
                rates[name].append(rate)
                results["cold_by"] = how or results.get("cold_by", "")
            for name in large:
                rates[name].append(measure_large(file, ahead=name.endswith("readahead")))
    for name, values in rates.items():
        results["cases"][name] = {"median_images_per_second": round(statistics.median(values)),
                                  "best_images_per_second": round(max(values)), "runs": [round(v) for v in values]}
        print(f"{name:>34}: median {statistics.median(values):>9,.0f} images/s, best {max(values):>9,.0f} "
              f"(runs {', '.join(f'{v:,.0f}' for v in values)})")
    print(f"{cpu}, {results['threads']} threads; cold: {results['cold_by']}")
    out = REPO / "benchmarks" / "results" / "gather.json"
    out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
