import gzip
import hashlib

import numpy as np
import pytest
import torch

from cnnlab import CnnlabError, datasets
from conftest import make_mirror, synthetic_digits, write_idx


def test_idx_files_decode_to_the_arrays_written(tmp_path):
    mirror = make_mirror(tmp_path / "m", n_train=50, n_test=20, gz=False)
    root = tmp_path / "raw"
    datasets.fetch("mnist", root, mirror, verify=False)
    images, labels = datasets.load_split("mnist", root, "train")
    expected_images, expected_labels = synthetic_digits(50, seed=1)
    assert images.dtype == torch.uint8 and images.shape == (50, 1, 28, 28)
    assert torch.equal(images[:, 0], torch.from_numpy(expected_images))
    assert torch.equal(labels, torch.from_numpy(expected_labels).long())


def test_gzipped_and_plain_mirrors_give_the_same_content(tmp_path):
    plain = make_mirror(tmp_path / "plain", n_train=30, n_test=10, gz=False)
    zipped = make_mirror(tmp_path / "zipped", n_train=30, n_test=10, gz=True)
    a = datasets.fetch("mnist", tmp_path / "a", plain, verify=False)
    b = datasets.fetch("mnist", tmp_path / "b", zipped, verify=False)
    for name, _ in datasets.DATASETS["mnist"].files():
        assert (a / name).read_bytes() == (b / name).read_bytes()


def test_content_checksum_is_verified_for_mnist(tmp_path, mirror):
    with pytest.raises(CnnlabError) as err:
        datasets.fetch("mnist", tmp_path / "raw", mirror, verify=True)
    message = str(err.value)
    assert "corrupt or not the original train-images-idx3-ubyte" in message
    assert "6bbc9ace898e44ae57da46a324031adb" in message  # names what was expected
    assert "\n" not in message


def test_checksum_is_of_the_uncompressed_content(tmp_path, monkeypatch):
    """A re-compressed file (different .gz bytes, same content) must pass."""
    mirror = make_mirror(tmp_path / "m", n_train=20, n_test=10, gz=True)
    raw = mirror / "MNIST" / "raw"
    content = {p.name[:-3]: hashlib.md5(gzip.decompress(p.read_bytes())).hexdigest() for p in raw.glob("*.gz")}
    recompressed = raw / "train-images-idx3-ubyte.gz"
    recompressed.write_bytes(gzip.compress(gzip.decompress(recompressed.read_bytes()), compresslevel=1))
    spec = datasets.DATASETS["mnist"]
    monkeypatch.setitem(datasets.DATASETS, "mnist", datasets.DatasetSpec("mnist", spec.source, spec.classes, content))
    out = datasets.fetch("mnist", tmp_path / "raw", mirror, verify=True)
    assert sorted(p.name for p in out.iterdir()) == sorted(content)


def test_missing_file_names_the_file_and_the_fix(tmp_path, mirror):
    (mirror / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(CnnlabError, match=r"missing MNIST/raw/t10k-labels-idx1-ubyte.*CNNLAB_DATA_MIRROR"):
        datasets.fetch("mnist", tmp_path / "raw", mirror, verify=False)


def test_truncated_gzip_is_reported_with_its_path(tmp_path, mirror):
    broken = mirror / "MNIST" / "raw" / "train-labels-idx1-ubyte.gz"
    broken.write_bytes(broken.read_bytes()[:20])
    with pytest.raises(CnnlabError, match="train-labels-idx1-ubyte.gz: unreadable"):
        datasets.fetch("mnist", tmp_path / "raw", mirror, verify=False)


def test_datasets_without_content_checksum_need_the_original_archive(tmp_path):
    mirror = make_mirror(tmp_path / "m", folder="FashionMNIST", n_train=20, n_test=10, gz=False)
    with pytest.raises(CnnlabError, match="provide the original train-images-idx3-ubyte.gz"):
        datasets.fetch("fashion_mnist", tmp_path / "raw", mirror, verify=True)
    zipped = make_mirror(tmp_path / "z", folder="FashionMNIST", n_train=20, n_test=10, gz=True)
    with pytest.raises(CnnlabError, match="MD5 [0-9a-f]{32}, expected 8d4fb7e6c68d591d4c3dfef9ec88bf0d"):
        datasets.fetch("fashion_mnist", tmp_path / "raw", zipped, verify=True)


def test_no_network_and_no_mirror_gives_one_clear_line(tmp_path, monkeypatch):
    spec = datasets.DATASETS["mnist"]

    class Unreachable(spec.source):
        mirrors = ["http://127.0.0.1:9/"]  # discard port: refused at once

    monkeypatch.setitem(datasets.DATASETS, "mnist", datasets.DatasetSpec("mnist", Unreachable, spec.classes))
    with pytest.raises(CnnlabError, match="could not download train-images-idx3-ubyte.gz .*set CNNLAB_DATA_MIRROR"):
        datasets.fetch("mnist", tmp_path / "raw", None)


def test_malformed_idx_is_a_clear_error(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    write_idx(raw / "train-images-idx3-ubyte", np.zeros((4, 28, 28), np.uint8))
    (raw / "train-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x09garbage")  # 9 dimensions: invalid
    with pytest.raises(CnnlabError, match="not valid IDX data"):
        datasets.load_split("mnist", tmp_path, "train")


def test_mismatched_image_and_label_counts(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    write_idx(raw / "t10k-images-idx3-ubyte", np.zeros((4, 28, 28), np.uint8))
    write_idx(raw / "t10k-labels-idx1-ubyte", np.zeros(3, np.uint8))
    with pytest.raises(CnnlabError, match="4 images but 3 labels"):
        datasets.load_split("mnist", tmp_path, "test")


def test_real_mnist_verifies(tmp_path, real_mirror):
    raw = datasets.fetch("mnist", tmp_path / "raw", real_mirror, verify=True)
    images, labels = datasets.load_split("mnist", tmp_path / "raw", "test")
    assert images.shape == (10000, 1, 28, 28)
    assert torch.bincount(labels).tolist()[:2] == [980, 1135]
    assert len(list(raw.iterdir())) == 4
