import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cnnlab.engine.batches import DeviceSplit
from cnnlab.evaluate import class_metrics
from cnnlab.engine.inference import predict_split


def test_scores_on_a_hand_worked_example():
    actual = np.array([0, 0, 1, 1, 2, 2])
    predicted = np.array([0, 1, 1, 1, 2, 0])
    overall, rows = class_metrics(actual, predicted, ["a", "b", "c"])
    assert overall["accuracy"] == pytest.approx(4 / 6)
    # precision: a 1/2, b 2/3, c 1/1; recall: a 1/2, b 2/2, c 1/2
    assert overall["macro_precision"] == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)
    assert overall["macro_recall"] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)
    f1 = [1 / 2, 2 * (2 / 3) / (2 / 3 + 1), 2 * 0.5 / 1.5]
    assert overall["macro_f1"] == pytest.approx(sum(f1) / 3)
    assert [r["support"] for r in rows] == [2, 2, 2]
    assert rows[1]["recall"] == 1.0


def test_a_class_never_predicted_scores_zero_not_nan():
    overall, rows = class_metrics(np.array([0, 1, 2]), np.array([0, 1, 1]), ["a", "b", "c"])
    assert rows[2]["precision"] == 0.0 and rows[2]["f1"] == 0.0
    assert not np.isnan(overall["macro_f1"])


def test_predict_matches_a_direct_forward_pass():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (37, 1, 4, 4), dtype=torch.uint8)
    labels = torch.randint(0, 3, (37,))
    data = DeviceSplit(images, labels, [0.5], [0.25], torch.device("cpu"))
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    result = predict_split(model, data, batch_size=10)
    x = (images.float() / 255 - 0.5) / 0.25
    logits = model(x)
    assert np.array_equal(result.predicted.numpy(), logits.argmax(1).numpy())
    assert result.loss == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-5)
    assert result.accuracy == pytest.approx((logits.argmax(1) == labels).float().mean().item())
    assert torch.allclose(result.probabilities, F.softmax(logits, 1), atol=1e-6)


def shifted(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """x moved by (dy, dx) pixels, the edge reflected into the gap (what flip_translate should look at)."""
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    h, w = x.shape[-2:]
    return padded[..., 1 - dy:1 - dy + h, 1 - dx:1 - dx + w]


def test_tta_scores_the_mean_logits_of_each_view(tmp_path):
    from cnnlab.engine.checkpoints import checkpoint
    from cnnlab.evaluate import evaluate_model
    from cnnlab.models import build
    from cnnlab.prepare import prepare, save_prepared
    torch.manual_seed(0)
    images = torch.randint(0, 256, (60, 1, 4, 4), dtype=torch.uint8)
    labels = torch.arange(60) % 3
    data = DeviceSplit(images, labels, [0.5], [0.25], torch.device("cpu"))
    model = build("mlp", 1, 3, 4).eval()  # not mirror-symmetric

    def mean_logits(uint8_images, tta):
        x = (uint8_images.float() / 255 - 0.5) / 0.25
        with torch.no_grad():
            if tta == "none":
                return model(x)
            mirrored = (model(x) + model(x.flip(-1))) / 2
            if tta == "flip":
                return mirrored
            # airbench94's: half the pair itself, a quarter each the pair moved down-right and up-left
            moved = [shifted(x, 1, 1), shifted(x, -1, -1)]
            return mirrored / 2 + sum((model(m) + model(m.flip(-1))) / 2 for m in moved) / 4

    probabilities = {}
    for tta in ("none", "flip", "flip_translate"):
        got = predict_split(model, data, batch_size=16, tta=tta)
        assert got.loss == pytest.approx(F.cross_entropy(mean_logits(images, tta), labels).item(), rel=1e-5)
        assert torch.allclose(got.probabilities, F.softmax(mean_logits(images, tta), 1), atol=1e-6)
        probabilities[tta] = got.probabilities
    assert not torch.allclose(probabilities["flip"], probabilities["none"], atol=1e-4)
    assert not torch.allclose(probabilities["flip_translate"], probabilities["flip"], atol=1e-4)
    # the checkpoint carries the choice, so the evaluate stage predicts as validation did
    splits = prepare((images, labels), (images[:30], labels[:30]), ("a", "b", "c"),
                     {"train_size": None, "test_size": None, "samples_per_class": None, "val_fraction": 0.25,
                      "val_size": None, "test_fraction": 0.2, "class_fraction": {}, "seed": 0})
    save_prepared(splits, tmp_path / "prepared")
    info = {**splits["info"], "mean": [0.5], "std": [0.25]}
    for tta in ("none", "flip", "flip_translate"):
        torch.save(checkpoint("mlp", model, {}, info, "fp32", tta), tmp_path / "model.pt")
        test_images, test_labels = splits["test"]
        expected = mean_logits(test_images, tta)
        got = evaluate_model("mlp", tmp_path / "model.pt", tmp_path / "prepared", 16).json["metrics"]["loss"]
        assert got == pytest.approx(F.cross_entropy(expected, test_labels).item(), rel=1e-5)


def test_scores_match_scikit_learn():
    from sklearn.metrics import accuracy_score, confusion_matrix as sk_confusion, precision_recall_fscore_support
    from cnnlab.evaluate import confusion_matrix
    rng = np.random.default_rng(0)
    actual = rng.integers(0, 5, 300)
    predicted = np.where(rng.random(300) < 0.6, actual, rng.integers(0, 4, 300))  # class 4 never predicted
    actual[actual == 3] = 2  # class 3 never present
    classes = list("abcde")
    overall, rows = class_metrics(actual, predicted, classes)
    labels = list(range(5))
    per_class = precision_recall_fscore_support(actual, predicted, labels=labels, zero_division=0)
    macro = precision_recall_fscore_support(actual, predicted, labels=labels, average="macro", zero_division=0)
    assert overall["accuracy"] == pytest.approx(accuracy_score(actual, predicted))
    assert [overall[k] for k in ("macro_precision", "macro_recall", "macro_f1")] == pytest.approx(list(macro[:3]))
    for key, column in zip(("precision", "recall", "f1", "support"), per_class):
        assert [row[key] for row in rows] == pytest.approx(list(column))
    assert (confusion_matrix(actual, predicted, 5) == sk_confusion(actual, predicted, labels=labels)).all()


def test_a_checkpoint_names_its_test_time_views_and_older_ones_still_read():
    from cnnlab.engine.checkpoints import tta_of
    assert tta_of({"tta": "flip_translate"}) == "flip_translate"
    assert tta_of({"flip_tta": True}) == "flip" and tta_of({"flip_tta": False}) == "none" and tta_of({}) == "none"
