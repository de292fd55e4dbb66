"""train.watch: pictures and curves of a model before training and after every epoch, fixed images,
and a fit that trains exactly as it would unwatched."""

import numpy as np
import pytest
import torch

from cnnlab import CnnlabError
from cnnlab.models import build
from cnnlab.train.loop import fit
from cnnlab.train.resume import Resume
from cnnlab.train.watch import Watch, silhouette
from test_train import CFG, splits


def watched_fit(name="lenet", epochs=2, **options):
    train, val = splits()
    torch.manual_seed(0)
    model = build(name, 1, 10, 28)
    seen = []
    result = fit(model, train, val, {**CFG, "epochs": epochs}, torch.Generator().manual_seed(0),
                 watch=Watch(name, val, 10, "integrated_gradients", 0), on_epoch=lambda row, w: seen.append((row, w)),
                 **options)
    return model, result, seen


@pytest.mark.parametrize("name", ["mlp", "lenet"])
def test_a_picture_of_each_kind_at_every_step_and_the_steps_differ(name):
    _, result, _ = watched_fit(name)
    assert [s["epoch"] for s in result["watch"]] == [0, 1, 2]
    kinds = {"filters", "attributions"} | ({"feature_maps"} if name == "lenet" else set())
    for snapshot in result["watch"]:
        assert set(snapshot["images"]) == kinds
        assert all(image.dtype == torch.uint8 and image.shape[-1] == 3 for image in snapshot["images"].values())
    first, last = result["watch"][0]["images"], result["watch"][-1]["images"]
    assert all(not torch.equal(first[kind], last[kind]) for kind in kinds)
    assert result["watch"][-1]["silhouette"] > result["watch"][0]["silhouette"]  # the classes pulled apart


def test_watching_does_not_change_the_training():
    train, val = splits()
    weights = []
    for watch in (None, Watch("lenet", val, 10, "integrated_gradients", 0)):
        torch.manual_seed(0)
        model = build("lenet", 1, 10, 28)
        fit(model, train, val, {**CFG, "epochs": 2}, torch.Generator().manual_seed(0), watch=watch)
        weights.append(model.state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_every_step_is_reported_once_with_its_epoch():
    _, _, seen = watched_fit()
    assert [(row and row["epoch"], w and w["epoch"]) for row, w in seen] == [(None, 0), (1, 1), (2, 2)]


def test_a_resumed_fit_keeps_the_earlier_steps_and_adds_no_duplicates(tmp_path):
    resume = Resume(tmp_path / "lenet.pt", "same")

    def killed_after_epoch_1(row, watched):
        if row is not None and row["epoch"] == 1:
            raise KeyboardInterrupt

    train, val = splits()
    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        fit(build("lenet", 1, 10, 28), train, val, {**CFG, "epochs": 3}, torch.Generator().manual_seed(0),
            watch=Watch("lenet", val, 10, "integrated_gradients", 0), on_epoch=killed_after_epoch_1, resume=resume)
    _, resumed, seen = watched_fit(epochs=3, resume=resume)
    _, whole, _ = watched_fit(epochs=3)
    assert [s["epoch"] for s in resumed["watch"]] == [0, 1, 2, 3]
    assert [w["epoch"] for _, w in seen] == [0, 1, 2, 3]  # the live log gets the earlier steps again, once
    for kept, uninterrupted in zip(resumed["watch"], whole["watch"]):
        assert torch.equal(kept["images"]["filters"], uninterrupted["images"]["filters"])


def test_silhouette_is_scikit_learns():
    from sklearn.metrics import silhouette_score
    generator = torch.Generator().manual_seed(0)
    features, labels = torch.randn(300, 8, generator=generator), torch.randint(0, 6, (300,), generator=generator)
    features[labels == 2] += 3
    labels[0] = 9  # a class of one image: its coefficient is 0, as scikit-learn has it
    assert silhouette(features, labels) == pytest.approx(float(silhouette_score(features.numpy(), labels.numpy())),
                                                         abs=1e-6)  # it sums in float32


def test_a_method_the_model_cannot_give_is_one_line():
    _, val = splits()
    with pytest.raises(CnnlabError, match="train.watch_method gradcam needs a spatial layer.*mlp"):
        Watch("mlp", val, 10, "gradcam", 0)


def test_the_fixed_images_do_not_depend_on_the_model():
    _, val = splits()
    a, b = Watch("lenet", val, 10, "integrated_gradients", 0), Watch("mlp", val, 10, "integrated_gradients", 0)
    assert torch.equal(a.per_class, b.per_class) and torch.equal(a.deletion, b.deletion)
    assert np.array_equal(val.labels[a.per_class].numpy(), np.arange(10))


def test_the_methods_params_accept_are_explains_own():
    """params.yaml's train.watch_method list (config sits below explain, so it cannot ask) is every
    attribution method explain builds, the random baseline aside."""
    from cnnlab import explain
    from cnnlab.config.params import WATCH_METHODS
    assert set(WATCH_METHODS) == set(explain.methods("some.layer", 0)) - {"random"}
