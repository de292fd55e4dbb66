"""Prepared splits on disk as .npy memory maps, written a chunk at a time, read by index; memory checks
that read the process's cgroup limit (fake /proc and /sys trees)."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from cnnlab import CnnlabError, prepare as prep, runtime
from cnnlab.engine.batches import DeviceBudget, DeviceSplit
from cnnlab.train import readahead

OPTIONS = {"train_size": None, "test_size": None, "samples_per_class": None, "val_fraction": 0.2,
           "val_size": None, "test_fraction": 0.2, "class_fraction": {}, "seed": 3}


def fake_tree(root: Path, cgroup: str, mountinfo: str, files: dict[str, str]) -> Path:
    (root / "proc/self").mkdir(parents=True)
    (root / "proc/self/cgroup").write_text(cgroup)
    (root / "proc/self/mountinfo").write_text(mountinfo)
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_cgroup_v2_limit_is_the_tightest_of_the_process_cgroup_and_its_parents(tmp_path):
    root = fake_tree(tmp_path, "0::/jobs/42\n", "41 31 0:38 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n", {
        "sys/fs/cgroup/jobs/42/memory.max": "1000000\n",
        "sys/fs/cgroup/jobs/42/memory.current": "300000\n",
        "sys/fs/cgroup/jobs/42/memory.stat": "anon 200000\ninactive_file 100000\nactive_file 0\n",
        "sys/fs/cgroup/jobs/memory.max": "600000\n",
        "sys/fs/cgroup/jobs/memory.current": "500000\n",
        "sys/fs/cgroup/memory.max": "max\n",  # no limit at the top
        "sys/fs/cgroup/memory.current": "9000000\n",
    })
    # own cgroup: 1,000,000 - (300,000 - 100,000 droppable cache); the parent's 100,000 is tighter
    assert runtime.cgroup_headroom(root) == 100_000
    (root / "sys/fs/cgroup/jobs/memory.max").write_text("max\n")
    assert runtime.cgroup_headroom(root) == 800_000


def test_cgroup_v1_memory_controller_in_a_container(tmp_path):
    cgroup = "9:name=systemd:/\n4:memory:/docker/abc\n3:cpuset:/\n0::/\n"
    mounts = ("31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n"
              "35 31 0:32 /docker/abc /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
              "36 31 0:33 / /sys/fs/cgroup/cpuset rw - cgroup cgroup rw,cpuset\n")
    root = fake_tree(tmp_path, cgroup, mounts, {
        "sys/fs/cgroup/memory/memory.limit_in_bytes": "2147483648\n",
        "sys/fs/cgroup/memory/memory.usage_in_bytes": "1073741824\n",
        "sys/fs/cgroup/memory/memory.stat": "cache 10\ntotal_inactive_file 73741824\n",
    })
    assert runtime.cgroup_headroom(root) == 2147483648 - 1000000000
    (root / "sys/fs/cgroup/memory/memory.limit_in_bytes").write_text("9223372036854771712\n")  # v1's "no limit"
    assert runtime.cgroup_headroom(root) is None


def test_no_cgroup_files_means_no_limit(tmp_path):
    assert runtime.cgroup_headroom(tmp_path) is None
    root = fake_tree(tmp_path / "v2", "0::/\n", "41 31 0:38 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n", {})
    assert runtime.cgroup_headroom(root) is None


def test_check_memory_stops_at_the_cgroup_limit(monkeypatch):
    monkeypatch.setattr(runtime, "cgroup_headroom", lambda root=None: 2**20)
    assert runtime.available_bytes() == 2**20
    with pytest.raises(CnnlabError, match="needs 1.00 GiB but only 0.00 GiB is free to this process"):
        runtime.check_memory(2**30, "decoding")


def dataset(n: int = 300, seed: int = 0, channels: int = 3, side: int = 8):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, channels, side, side), dtype=torch.uint8, generator=generator)
    images[5] = images[2]  # a duplicate, dropped
    return images, torch.arange(n) % 5


def memory_map(images: torch.Tensor, path: Path) -> torch.Tensor:
    np.save(path, images.numpy())
    return torch.from_numpy(np.load(path, mmap_mode="c"))


def test_splits_selected_from_a_memory_map_equal_those_from_memory(tmp_path):
    images, labels = dataset()
    classes = tuple("abcde")
    in_memory = prep.prepare((images, labels), None, classes, OPTIONS)
    selected = prep.select_splits((memory_map(images, tmp_path / "all.npy"), labels), None, classes, OPTIONS)
    for name in prep.SPLITS:
        assert isinstance(selected[name][0], prep.Picked)
        assert torch.equal(selected[name][0].tensor(), in_memory[name][0])
        assert torch.equal(selected[name][1], in_memory[name][1])
    assert selected["info"] == in_memory["info"]
    assert in_memory["info"]["duplicates_dropped"]["repeated_in_train"] == 1


def test_histogram_statistics_match_float64_ones():
    images, _ = dataset(n=500)
    picked = prep.Picked(images)[torch.arange(0, 500, 3)]
    for counted, reduced in ((prep.histogram_stats(images), prep.channel_stats(images)),
                             (prep.histogram_stats(picked), prep.channel_stats(picked.tensor()))):
        for ours, torchs in zip(counted, reduced):
            assert ours == pytest.approx(torchs, rel=1e-9)


def test_chunked_writing_equals_whole_writing_and_loads_memory_mapped(tmp_path, monkeypatch):
    images, labels = dataset()
    splits = prep.select_splits((images, labels), None, tuple("abcde"), OPTIONS)
    monkeypatch.setattr(prep, "CHUNK_BYTES", 7 * 3 * 8 * 8)  # chunks of 7 images, the last one short
    prep.save_prepared(splits, tmp_path / "chunked")
    loaded = prep.load_prepared(tmp_path / "chunked")
    for name in prep.SPLITS:
        whole = splits[name][0].tensor()
        np.save(tmp_path / "whole.npy", whole.numpy())
        images_file, labels_file = prep.split_files(tmp_path / "chunked", name)
        assert images_file.read_bytes() == (tmp_path / "whole.npy").read_bytes()
        assert torch.equal(loaded[name][0], whole) and torch.equal(loaded[name][1], splits[name][1])
        assert loaded[name][1].dtype == torch.int64
    mapped = Path("/proc/self/maps")
    if mapped.exists():  # the images are a map of the file, not a copy
        assert str(prep.split_files(tmp_path / "chunked", "train")[0]) in mapped.read_text()
    before = prep.split_files(tmp_path / "chunked", "train")[0].read_bytes()
    loaded["train"][0][0] = 0  # copy-on-write: the prepared file never changes
    assert prep.split_files(tmp_path / "chunked", "train")[0].read_bytes() == before


def test_missing_split_file_names_it(tmp_path):
    images, labels = dataset()
    prep.save_prepared(prep.select_splits((images, labels), None, tuple("abcde"), OPTIONS), tmp_path)
    prep.split_files(tmp_path, "val")[1].unlink()
    with pytest.raises(CnnlabError, match="val_labels.npy: missing; run the prepare stage"):
        prep.load_prepared(tmp_path)


@pytest.mark.parametrize("budget", [None, 0])
def test_device_split_batches_from_a_map_equal_batches_from_memory(tmp_path, budget):
    images, labels = dataset(n=203)
    mapped = memory_map(images, tmp_path / "train.npy")
    device = torch.device("cpu")
    splits = [DeviceSplit(x, labels, [0.5] * 3, [0.25] * 3, device,
                          budget=None if budget is None else DeviceBudget(device, budget)) for x in (images, mapped)]
    assert splits[1].images.data_ptr() == mapped.data_ptr()  # gathered from the map, never copied whole
    for case in ("shuffled", "in order", "by index"):
        one, other = (list(split.batches(8, **batch_options(case))) for split in splits)
        assert len(one) == len(other) > 1
        for (x, y), (u, v) in zip(one, other):
            assert torch.equal(x, u) and torch.equal(y, v)


@pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="posix_fadvise is Linux's")
def test_readahead_asks_for_this_batch_and_the_next_and_changes_no_batch(tmp_path, monkeypatch):
    images = torch.randint(0, 256, (40, 3, 64, 64), dtype=torch.uint8)  # 12 KiB rows: read ahead
    labels = torch.arange(40) % 4
    file = tmp_path / "train_images.npy"
    np.save(file, images.numpy())
    monkeypatch.setattr(readahead, "PAGE", 4096)  # whatever this machine's page size
    ahead = readahead.for_split(file)
    advised, fadvise = [], os.posix_fadvise
    monkeypatch.setattr(os, "posix_fadvise", lambda fd, offset, length, advice:
                        advised.append((offset, length, advice)) or fadvise(fd, offset, length, advice))
    mapped = torch.from_numpy(np.load(file, mmap_mode="c"))
    plain, read_ahead = (DeviceSplit(mapped, labels, [0.5] * 3, [0.25] * 3, torch.device("cpu"), readahead=r)
                         for r in (None, ahead))
    one, other = (list(split.batches(16, torch.Generator().manual_seed(2))) for split in (plain, read_ahead))
    for (x, y), (u, v) in zip(one, other, strict=True):
        assert torch.equal(x, u) and torch.equal(y, v)
    order = torch.randperm(40, generator=torch.Generator().manual_seed(2)).tolist()
    rows = [row for start in range(0, 40, 16) for row in order[start:start + 32]]
    assert advised == [(ahead.offset + row * 12288, 12288, os.POSIX_FADV_WILLNEED) for row in rows]
    with open(file, "rb") as f:  # the advised bytes are the rows themselves, past the .npy header
        f.seek(ahead.offset + rows[0] * 12288)
        assert f.read(12288) == images[rows[0]].numpy().tobytes()
    advised.clear()  # a data-parallel rank asks only for its own part of each batch
    list(read_ahead.batches(16, torch.Generator().manual_seed(2), shard=(1, 2)))
    mine = [torch.tensor(order[s:s + 16]).tensor_split(2)[1].tolist() for s in range(0, 40, 16)]  # rank 1's half
    assert advised == [(ahead.offset + row * 12288, 12288, os.POSIX_FADV_WILLNEED)
                       for i in range(3) for row in mine[i] + (mine[i + 1] if i < 2 else [])]


def test_no_readahead_for_rows_under_a_page(tmp_path):
    np.save(tmp_path / "digits.npy", np.zeros((10, 1, 28, 28), np.uint8))  # MNIST: the kernel's own readahead
    assert readahead.for_split(tmp_path / "digits.npy") is None


def batch_options(case: str) -> dict:
    if case == "shuffled":
        return {"generator": torch.Generator().manual_seed(1)}
    return {"index": torch.arange(200, 0, -7)} if case == "by index" else {}


def test_the_address_space_limit_counts_as_a_memory_limit(monkeypatch):
    """`ulimit -v` caps what a process may map, memory maps included: every memory check reads it."""
    monkeypatch.setattr(runtime, "cgroup_headroom", lambda root=None: None)
    monkeypatch.setattr(runtime, "address_space_room", lambda: 3 * 2**20)
    assert runtime.available_bytes() == 3 * 2**20
    with pytest.raises(CnnlabError, match="address-space limit\\); lower x"):
        runtime.check_memory(2**30, "decoding", fix="lower x")
