import gzip
import hashlib

import numpy as np
import pytest
import torch

from cnnlab import CnnlabError
from cnnlab.datasets import DATASETS, DatasetSpec, idx
from cnnlab.datasets import formats as datasets
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
    for name in idx.FILES:
        assert (a / name).read_bytes() == (b / name).read_bytes()


@pytest.mark.parametrize("dataset", ["mnist", "fashion_mnist", "kmnist"])
def test_idx_file_names_are_torchvisions(dataset):
    spec = DATASETS[dataset]
    resources = idx._torchvision(spec, "resources")
    assert [f"{name}.gz" for name in idx.FILES] == [archive for archive, _ in resources]
    assert [idx.archive_md5(spec, name) for name in idx.FILES] == [md5 for _, md5 in resources]


def test_mnist_from_a_mirror_does_not_import_torchvision(tmp_path):
    """Its content checksums are cnnlab's own; torchvision's datasets (a slow import) are asked only
    to download, or to verify a family member whose content checksum is unknown."""
    import subprocess
    import sys
    mirror = make_mirror(tmp_path / "m", n_train=30, n_test=10, gz=True)
    code = ("import sys; from pathlib import Path; from cnnlab import CnnlabError; "
            "from cnnlab.datasets import formats\n"
            f"formats.fetch('mnist', Path({str(tmp_path / 'a')!r}), Path({str(mirror)!r}), verify=False)\n"
            "try:\n"
            f"    formats.fetch('mnist', Path({str(tmp_path / 'b')!r}), Path({str(mirror)!r}), verify=True)\n"
            "except CnnlabError as err:\n"
            "    assert 'content MD5' in str(err), err\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision'))[:3])\n")
    ran = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "[]"


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
    spec = DATASETS["mnist"]
    monkeypatch.setitem(DATASETS, "mnist", DatasetSpec("mnist", spec.folder, spec.format, {**spec.meta, "content_md5": content}))
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
    real = idx.torchvision_attribute
    monkeypatch.setattr(idx, "torchvision_attribute",  # the discard port: refused at once
                        lambda m, c, a: ["http://127.0.0.1:9/"] if a == "mirrors" else real(m, c, a))
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


@pytest.mark.parametrize("archive", [False, True], ids=["folder", "tar.gz"])
def test_cifar10_decodes_to_the_arrays_written(tmp_path, archive):
    from conftest import colour_digits, make_cifar_mirror
    mirror = make_cifar_mirror(tmp_path / "m", per_batch=12, n_test=30, archive=archive)
    raw = datasets.fetch("cifar10", tmp_path / "raw", mirror, verify=False)
    assert raw.name == "cifar-10-batches-py"
    images, labels = datasets.load_split("cifar10", tmp_path / "raw", "test")
    expected, expected_labels = colour_digits(30, 99)
    assert images.shape == (30, 3, 32, 32) and images.dtype == torch.uint8
    assert torch.equal(images, torch.from_numpy(expected)) and torch.equal(labels, torch.from_numpy(expected_labels).long())
    train, train_labels = datasets.load_split("cifar10", tmp_path / "raw", "train")
    assert train.shape == (60, 3, 32, 32) and len(train_labels) == 60          # five batches of 12
    assert datasets.class_names("cifar10", tmp_path / "raw") == tuple(f"class{i}" for i in range(10))


def test_cifar100_reads_fine_labels_and_its_100_names(tmp_path):
    from conftest import make_cifar_mirror
    mirror = make_cifar_mirror(tmp_path / "m", dataset="cifar100", per_batch=8, n_test=20)
    datasets.fetch("cifar100", tmp_path / "raw", mirror, verify=False)
    images, _ = datasets.load_split("cifar100", tmp_path / "raw", "train")
    assert images.shape == (40, 3, 32, 32)
    assert len(datasets.class_names("cifar100", tmp_path / "raw")) == 100


def test_cifar_checksums_are_verified_per_file(tmp_path):
    from conftest import make_cifar_mirror
    mirror = make_cifar_mirror(tmp_path / "m", per_batch=4, n_test=4)
    with pytest.raises(CnnlabError, match="data_batch_1: corrupt or not the original .*expected c99cafc152244af753f735de768cd75f"):
        datasets.fetch("cifar10", tmp_path / "raw", mirror, verify=True)
    archived = make_cifar_mirror(tmp_path / "a", per_batch=4, n_test=4, archive=True)
    with pytest.raises(CnnlabError, match="cifar-10-python.tar.gz: corrupt .*expected c58f30108f718f92721af3b95e74349a"):
        datasets.fetch("cifar10", tmp_path / "raw2", archived, verify=True)


def test_a_doctored_cifar_pickle_cannot_run_code(tmp_path):
    """The python CIFAR format is a pickle: only numpy arrays and plain containers may come out of it."""
    import os
    import pickle

    from conftest import make_cifar_mirror
    mirror = make_cifar_mirror(tmp_path / "m", per_batch=4, n_test=4)
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    (mirror / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps({b"data": Payload()}))
    datasets.fetch("cifar10", tmp_path / "raw", mirror, verify=False)
    with pytest.raises(CnnlabError, match="test_batch: not a CIFAR batch file .*refused global"):
        datasets.load_split("cifar10", tmp_path / "raw", "test")
    assert not marker.exists()


def test_cifar_mirror_without_the_dataset_says_what_to_copy(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CnnlabError, match="missing cifar-10-batches-py/ and cifar-10-python.tar.gz"):
        datasets.fetch("cifar10", tmp_path / "raw", tmp_path / "empty")


def test_svhn_decodes_hwcn_and_maps_label_10_to_0(tmp_path):
    from conftest import colour_digits, make_svhn_mirror
    mirror = make_svhn_mirror(tmp_path / "m", n_train=30, n_test=20)
    datasets.fetch("svhn", tmp_path / "raw", mirror, verify=False)
    images, labels = datasets.load_split("svhn", tmp_path / "raw", "test")
    expected, expected_labels = colour_digits(20, 2)
    assert images.shape == (20, 3, 32, 32)
    assert torch.equal(images, torch.from_numpy(expected))
    assert torch.equal(labels, torch.from_numpy(expected_labels).long()) and 0 in labels.tolist()
    with pytest.raises(CnnlabError, match="train_32x32.mat: corrupt or not the original .*e26dedcc434d2e4c54c9b2d4a06d8373"):
        datasets.fetch("svhn", tmp_path / "raw2", mirror, verify=True)


def write_image_folder(base, mode="L", size=20):
    """train/ and test/ with two classes; class 'bright' images are light, 'dark' ones dark."""
    from PIL import Image
    for split, n in (("train", 4), ("test", 2)):
        for cls, value in (("bright", 220), ("dark", 30)):
            folder = base / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                colour = value if mode == "L" else (value, value // 2, 255 - value)
                Image.new(mode, (size, size + 4), colour).save(folder / f"{i}.png")
    return base


def test_folder_dataset_decodes_grayscale_at_the_asked_size(tmp_path):
    base = write_image_folder(tmp_path / "imgs")
    datasets.fetch("folder", tmp_path / "raw", path=str(base))
    images, labels = datasets.load_split("folder", tmp_path / "raw", "train", image_size=16)
    assert images.shape == (8, 1, 16, 16) and images.dtype == torch.uint8
    assert datasets.class_names("folder", tmp_path / "raw") == ("bright", "dark")
    assert labels.tolist() == [0] * 4 + [1] * 4
    assert images[:4].float().mean() == 220 and images[4:].float().mean() == 30


def test_decode_all_hands_prepare_the_splits_a_folder_has(tmp_path):
    """A folder with train/ and test/ gives both (no val); a plain class tree comes as one set in
    the train place, with no test, for prepare to carve."""
    base = write_image_folder(tmp_path / "imgs")
    datasets.fetch("folder", tmp_path / "raw", path=str(base))
    train, test, classes, val = datasets.decode_all("folder", tmp_path / "raw", 8)
    assert (len(train[0]), len(test[0]), classes, val) == (8, 4, ("bright", "dark"), None)
    plain = tmp_path / "plain"
    (base / "train").rename(plain)
    datasets.fetch("folder", tmp_path / "raw2", path=str(plain))
    train, test, classes, val = datasets.decode_all("folder", tmp_path / "raw2", 8)
    assert (len(train[0]), test, classes, val) == (8, None, ("bright", "dark"), None)


def test_folder_dataset_with_any_colour_image_is_rgb(tmp_path):
    from PIL import Image
    base = write_image_folder(tmp_path / "imgs")
    Image.new("RGB", (10, 10), (200, 10, 10)).save(base / "test" / "bright" / "red.jpg")
    datasets.fetch("folder", tmp_path / "raw", path=str(base))
    images, _ = datasets.load_split("folder", tmp_path / "raw", "test", image_size=8)
    assert images.shape == (5, 3, 8, 8)
    red = images[2]  # sorted: 0.png, 1.png, red.jpg
    assert red[0].float().mean() > 150 and red[1].float().mean() < 60


def test_folder_dataset_names_the_unreadable_image(tmp_path):
    base = write_image_folder(tmp_path / "imgs")
    (base / "train" / "dark" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(CnnlabError, match=r"broken.png: unreadable image"):
        datasets.fetch("folder", tmp_path / "raw", path=str(base))


def test_folder_dataset_needs_matching_class_folders(tmp_path):
    base = write_image_folder(tmp_path / "imgs")
    (base / "test" / "dark").rename(base / "test" / "grey")
    with pytest.raises(CnnlabError, match="different class folders"):
        datasets.fetch("folder", tmp_path / "raw", path=str(base))
    with pytest.raises(CnnlabError, match="data.path must name a folder"):
        datasets.fetch("folder", tmp_path / "raw", path=None)


def class_tree(base, per_class=10, size=12):
    """A plain <class>/* tree (no train/ or test/), each class a different grey level with its own
    noise per image (identical images would be dropped as duplicates)."""
    from PIL import Image
    rng = np.random.default_rng(len(str(base)))
    for cls, value in (("bright", 220), ("dark", 30), ("mid", 128)):
        (base / cls).mkdir(parents=True)
        for i in range(per_class):
            noise = rng.integers(-20, 21, (size, size))
            Image.fromarray((value + noise).clip(0, 255).astype(np.uint8)).save(base / cls / f"{i}.png")
    return base


def test_a_plain_class_tree_gets_a_seeded_stratified_test_split(tmp_path):
    from cnnlab.prepare import prepare
    from conftest import base_params
    base = class_tree(tmp_path / "imgs")
    (base / "dark" / "readme.txt").write_text("not an image")
    raw = datasets.fetch("folder", tmp_path / "raw", path=str(base))
    manifest = __import__("json").loads((raw / "manifest.json").read_text())
    assert manifest["splits"] == ["all"] and manifest["skipped_not_images"] == 1 and manifest["images"] == {"all": 30}
    assert datasets.splits("folder", tmp_path / "raw") == ("all",)
    data = datasets.load_split("folder", tmp_path / "raw", "all", 8)
    options = {**base_params()["prepare"], "test_fraction": 0.2, "val_fraction": 0.25}
    splits = prepare(data, None, datasets.class_names("folder", tmp_path / "raw"), options)
    assert splits["info"]["class_counts"]["test"] == [2, 2, 2]
    assert splits["info"]["class_counts"]["train"] == [6, 6, 6] and splits["info"]["class_counts"]["val"] == [2, 2, 2]


def test_a_val_folder_is_used_as_the_validation_split(tmp_path):
    from cnnlab.prepare import prepare
    from conftest import base_params
    base = tmp_path / "imgs"
    for split, n in (("train", 6), ("val", 3), ("test", 2)):
        class_tree(base / split, per_class=n)
    datasets.fetch("folder", tmp_path / "raw", path=str(base))
    assert datasets.splits("folder", tmp_path / "raw") == ("train", "val", "test")
    decoded = {s: datasets.load_split("folder", tmp_path / "raw", s, 8) for s in ("train", "val", "test")}
    splits = prepare(decoded["train"], decoded["test"], datasets.class_names("folder", tmp_path / "raw"),
                     base_params()["prepare"], decoded["val"])
    assert splits["info"]["sizes"] == {"train": 18, "val": 9, "test": 6}


def test_parallel_decoding_gives_the_images_one_process_gives(tmp_path, monkeypatch):
    from cnnlab.datasets import folder
    base = tmp_path / "imgs"
    rng = np.random.default_rng(0)
    from PIL import Image
    for cls in ("a", "b"):
        (base / cls).mkdir(parents=True)
        for i in range(300):  # more than one chunk of 256
            Image.fromarray(rng.integers(0, 256, (20, 16, 3), dtype=np.uint8)).save(base / cls / f"{i:03d}.png")
    datasets.fetch("folder", tmp_path / "raw", path=str(base))
    parallel, labels = datasets.load_split("folder", tmp_path / "raw", "all", 12)
    monkeypatch.setattr(folder, "workers", lambda: 1)
    single, _ = datasets.load_split("folder", tmp_path / "raw", "all", 12)
    assert parallel.shape == (600, 3, 12, 12) and torch.equal(parallel, single)
    assert labels.tolist() == [0] * 300 + [1] * 300
    files = sorted((base / "b").glob("*.png"))
    expected = np.asarray(Image.open(files[7]).convert("RGB").resize((12, 12), Image.Resampling.BILINEAR))
    assert np.array_equal(parallel[307].permute(1, 2, 0).numpy(), expected)


@pytest.mark.parametrize("make,fragment", [
    (lambda base: (base / "train" / "dark" / "tiny.png").write_bytes(__import__("conftest").png_bytes(1, 1)),
     "tiny.png: too small to learn from (1x1 pixels, smaller than 8x8)"),
    (lambda base: (base / "train" / "dark" / "empty.jpg").write_bytes(b""), "empty.jpg: unreadable image"),
    (lambda base: (base / "train" / "grey").mkdir(), "train/grey: no images"),
])
def test_folder_problems_are_one_line_naming_the_path(tmp_path, make, fragment):
    base = write_image_folder(tmp_path / "imgs")
    make(base)
    with pytest.raises(CnnlabError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        datasets.fetch("folder", tmp_path / "raw", path=str(base))
