import numpy as np
import pytest
import torch

from cnnlab import CnnlabError
from cnnlab.prepare import channel_stats, per_class_sample, prepare, stratified_split, stratified_subset

OPTIONS = {"train_size": None, "samples_per_class": None, "test_size": None, "val_fraction": 0.2, "seed": 0}


def labelled(n, num_classes=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 1, 8, 8), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, num_classes, (n,), generator=g)
    return images, labels


def test_a_subset_is_seeded_stratified_and_in_the_original_order():
    """A folder lists its images class by class: the first N would be the first classes only."""
    images, labels = labelled(100)
    order = labels.argsort(stable=True)
    images, labels = images[order], labels[order]  # class by class, like a folder
    x, y = stratified_subset(images, labels, 30, seed=0, what="prepare.train_size")
    share = torch.bincount(y, minlength=10) - torch.bincount(labels, minlength=10) * 0.3
    assert share.abs().max() <= 1 and len(y) == 30  # every class in its proportion
    assert y.tolist() == sorted(y.tolist())  # kept in their original order
    again, _ = stratified_subset(images, labels, 30, seed=0, what="prepare.train_size")
    other, _ = stratified_subset(images, labels, 30, seed=1, what="prepare.train_size")
    assert torch.equal(x, again) and not torch.equal(x, other)
    with pytest.raises(CnnlabError, match="prepare.train_size is 101 but the dataset has only 100"):
        stratified_subset(images, labels, 101, seed=0, what="prepare.train_size")


def test_a_split_without_a_class_the_test_split_has_stops():
    from cnnlab.prepare import check_classes
    with pytest.raises(CnnlabError, match="the test split has class c but the training split has no image of it"):
        check_classes(torch.tensor([0, 1, 0]), {"test": torch.tensor([0, 2])}, ("a", "b", "c"))


def test_a_dataset_in_one_set_gets_a_seeded_stratified_test_split():
    data = labelled(500)
    splits = prepare(data, None, tuple("abcdefghij"), {**OPTIONS, "test_fraction": 0.2})
    assert splits["info"]["sizes"] == {"train": 320, "val": 80, "test": 100}
    share = torch.bincount(splits["test"][1], minlength=10) - torch.bincount(data[1], minlength=10) * 0.2
    assert share.abs().max() <= 1


def test_per_class_sample_is_balanced_seeded_and_from_the_data():
    images, labels = labelled(2000)
    x, y = per_class_sample(images, labels, 50, 10, seed=3)
    assert torch.bincount(y, minlength=10).tolist() == [50] * 10
    x2, y2 = per_class_sample(images, labels, 50, 10, seed=3)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    x3, _ = per_class_sample(images, labels, 50, 10, seed=4)
    assert not torch.equal(x, x3)
    rows = {bytes(img.numpy().tobytes()) for img in images}
    assert all(bytes(img.numpy().tobytes()) in rows for img in x)


def test_per_class_sample_refuses_a_class_that_is_too_small():
    images, labels = labelled(100)
    with pytest.raises(CnnlabError, match="samples_per_class is 50 but class .* has only"):
        per_class_sample(images, labels, 50, 10, seed=0)


def test_stratified_split_keeps_class_proportions_and_is_seeded():
    labels = torch.tensor([0] * 800 + [1] * 150 + [2] * 50)
    train, val = stratified_split(labels, 0.2, seed=0)
    assert len(val) == 200 and len(train) == 800
    assert set(train.tolist()).isdisjoint(val.tolist())
    assert torch.bincount(labels[val]).tolist() == [160, 30, 10]
    again, _ = stratified_split(labels, 0.2, seed=0)
    other, _ = stratified_split(labels, 0.2, seed=1)
    assert torch.equal(train, again) and not torch.equal(train, other)


def test_channel_stats_match_numpy_per_channel():
    images = torch.randint(0, 256, (20, 3, 5, 5), dtype=torch.uint8)
    mean, std = channel_stats(images)
    pixels = images.numpy().astype(np.float64) / 255
    np.testing.assert_allclose(mean, pixels.mean(axis=(0, 2, 3)), rtol=1e-9)
    np.testing.assert_allclose(std, pixels.std(axis=(0, 2, 3), ddof=1), rtol=1e-9)


def test_prepare_normalises_on_the_training_split_only():
    train, test = labelled(500), labelled(100, seed=1)
    test = (torch.full_like(test[0], 255), test[1])  # a test set far off the training statistics
    splits = prepare(train, test, tuple("abcdefghij"), {**OPTIONS, "train_size": 400})
    info = splits["info"]
    assert info["sizes"] == {"train": 320, "val": 80, "test": 100}
    expected_mean, _ = channel_stats(splits["train"][0])
    assert info["mean"] == expected_mean
    assert sum(info["class_counts"]["val"]) == 80
    assert info["channels"] == 1 and info["image_size"] == 8


def test_prepare_refuses_both_subset_kinds_via_params(tmp_path):
    from cnnlab.config.params import validate
    from conftest import base_params
    raw = base_params()
    raw["prepare"] = {**raw["prepare"], "train_size": 100, "samples_per_class": 10}
    with pytest.raises(CnnlabError, match="at most one of prepare.train_size and prepare.samples_per_class"):
        validate(raw)


def test_class_fraction_thins_only_the_chosen_classes_of_the_training_images():
    train, test = labelled(2000), labelled(200, seed=1)
    full = prepare(train, test, tuple("abcdefghij"), OPTIONS)["info"]["class_counts"]
    thinned = prepare(train, test, tuple("abcdefghij"), {**OPTIONS, "class_fraction": {3: 0.1, 8: 0.5}})
    counts = thinned["info"]["class_counts"]
    before = [full["train"][c] + full["val"][c] for c in range(10)]
    after = [counts["train"][c] + counts["val"][c] for c in range(10)]
    assert after[3] == round(0.1 * before[3]) and after[8] == round(0.5 * before[8])
    assert all(after[c] == before[c] for c in range(10) if c not in (3, 8))
    assert counts["test"] == full["test"]  # the test set is never thinned
    with pytest.raises(CnnlabError, match="class_fraction names class 12"):
        prepare(train, test, tuple("abcdefghij"), {**OPTIONS, "class_fraction": {12: 0.5}})
