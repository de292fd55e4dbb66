"""Attribution quality: deletion and insertion against a random map, and the model-randomisation
sanity check, on models whose evidence is known."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnlab import explain


def planted_patch_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise images whose class is only whether a 6x6 patch in one corner is bright (1) or dark (0)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 16, 16, generator=g) * 0.5
    y = torch.randint(0, 2, (n,), generator=g)
    x[:, 0, 1:7, 1:7] += (y.float() * 4 - 2).view(-1, 1, 1)
    return x, y


@pytest.fixture(scope="module")
def patch_model() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 16 * 16, 2))
    x, y = planted_patch_data(600, 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(40):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    test, labels = planted_patch_data(64, 2)
    assert (model(test).argmax(1) == labels).float().mean() > 0.95  # it learned the patch
    return model.eval(), test


def test_a_faithful_map_beats_random_on_a_model_that_relies_on_a_planted_patch(patch_model):
    model, x = patch_model
    named = {"integrated_gradients": explain.integrated_gradients, "occlusion": explain.occlusion,
             "random": explain.random_map(0)}
    numbers, curves, _, maps = explain.assess(model, x, named, seed=0)
    random = numbers["random"]
    for method in ("integrated_gradients", "occlusion"):
        assert numbers[method]["deletion_auc"] < random["deletion_auc"] - 0.3, numbers  # a clear margin
        assert numbers[method]["insertion_auc"] > random["insertion_auc"], numbers
        assert numbers[method]["beats_random"] and numbers[method]["faithfulness"] == "faithful", numbers
        assert numbers[method]["images"] == 64 and numbers[method]["deletion_minus_random_high"] < 0
        # most of the map's mass lies on the patch (36 of 256 pixels)
        share = maps[method][:, 1:7, 1:7].sum() / maps[method].sum()
        assert share > 0.5, (method, float(share))
    # occlusion's maps depend on the weights; integrated gradients multiplies by the input, which
    # keeps its ranking close to the input's on this two-layer model: the check is what tells them apart
    assert numbers["occlusion"]["passes_randomization"]
    assert explain.best(numbers) == "occlusion"
    assert {row["curve"] for row in curves} == {"deletion", "insertion"}


def test_a_map_of_the_input_alone_fails_the_randomisation_check(patch_model):
    """Edges of the image explain the input, not the model: their maps do not change when the
    weights are re-initialised (Adebayo et al.'s check), and the check flags them."""
    model, x = patch_model

    def edges(model, images, target):
        gx = images[..., :, 1:] - images[..., :, :-1]
        gy = images[..., 1:, :] - images[..., :-1, :]
        return (F.pad(gx.abs(), (0, 1)) + F.pad(gy.abs(), (0, 0, 0, 1))).sum(1)

    numbers, _, cascade_rows, _ = explain.assess(model, x, {"edges": edges, "input_gradients": explain.input_gradients,
                                                           "random": explain.random_map(0)}, seed=0)
    assert numbers["edges"]["randomized_spearman"] > 0.99 and not numbers["edges"]["passes_randomization"]
    assert numbers["input_gradients"]["randomized_spearman"] < 0.5 and numbers["input_gradients"]["passes_randomization"]
    # the cascade re-initialises from the top layer down: the head first, the convolution last
    assert [r["layer"] for r in cascade_rows if r["method"] == "edges"] == ["3", "0"]


def test_probability_curves_start_and_end_at_the_clean_and_the_blank_image(patch_model):
    model, x = patch_model
    target = model(x).argmax(1)
    maps = explain.random_map(3)(model, x, target)
    fractions, deletion, insertion = explain.probability_curves(model, x, target, maps, steps=4)
    with torch.no_grad():
        clean = F.softmax(model(x), 1).gather(1, target.view(-1, 1))[:, 0].numpy()
        blank = F.softmax(model(torch.zeros_like(x)), 1).gather(1, target.view(-1, 1))[:, 0].numpy()
    assert fractions.tolist() == [0, 0.25, 0.5, 0.75, 1] and deletion.shape == insertion.shape == (64, 5)
    assert np.allclose(deletion[:, 0], clean, atol=1e-6) and np.allclose(deletion[:, -1], blank, atol=1e-6)
    assert np.allclose(insertion[:, 0], blank, atol=1e-6) and np.allclose(insertion[:, -1], clean, atol=1e-6)
    assert explain.area(np.array([0.0, 1.0]), np.array([[1.0, 1.0], [0.0, 1.0]])).tolist() == [1.0, 0.5]


def test_curves_of_images_in_chunks_equal_one_batch(patch_model, monkeypatch):
    model, x = patch_model
    target = model(x).argmax(1)
    maps = explain.random_map(3)(model, x, target)
    whole = explain.probability_curves(model, x, target, maps)
    monkeypatch.setattr(explain, "PASS", 30)  # two images a pass
    for one, other in zip(whole, explain.probability_curves(model, x, target, maps)):
        assert np.allclose(one, other, atol=1e-6)


def test_integrated_gradients_do_not_depend_on_how_many_images_a_pass_holds(patch_model, monkeypatch):
    model, x = patch_model
    target = model(x).argmax(1)
    whole = explain.integrated_gradients(model, x, target)   # 16 images a pass
    monkeypatch.setattr(explain, "PASS", 64)                 # 4
    assert torch.allclose(whole, explain.integrated_gradients(model, x, target), atol=1e-6)


def test_integrated_gradients_equal_captums_and_leave_the_weights_gradients_alone(patch_model):
    from captum.attr import IntegratedGradients
    model, x = patch_model
    target = model(x).argmax(1)
    grads = [p.grad.clone() for p in model.parameters()]
    theirs = IntegratedGradients(model).attribute(x, target=target, n_steps=explain.IG_STEPS)
    assert torch.allclose(explain.integrated_gradients(model, x, target), theirs.abs().sum(1), atol=1e-6)
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))


def test_integrated_gradients_equal_captums_on_colour_images_through_batch_norm():
    from captum.attr import IntegratedGradients
    from cnnlab.models import build
    torch.manual_seed(0)
    model = build("resnet_small", 3, 10, 32).eval()
    x = torch.randn(5, 3, 32, 32)
    target = model(x).argmax(1)
    theirs = IntegratedGradients(model).attribute(x, target=target, n_steps=explain.IG_STEPS)
    assert torch.allclose(explain.integrated_gradients(model, x, target), theirs.abs().sum(1), atol=1e-6)


@pytest.mark.parametrize("images_a_pass", [1, 3, 8, 40])
def test_integrated_gradients_never_pass_more_images_than_the_bound(patch_model, monkeypatch, images_a_pass):
    model, x = patch_model
    target = model(x[:5]).argmax(1)
    whole = explain.integrated_gradients(model, x[:5], target)
    monkeypatch.setattr(explain, "pass_size", lambda image_values: images_a_pass)
    bound = max(2, images_a_pass)  # captum's rule: a pass holds at least two steps
    passes = []
    handle = model.register_forward_hook(lambda module, inputs, output: passes.append(len(inputs[0])))
    try:
        assert torch.allclose(explain.integrated_gradients(model, x[:5], target), whole, atol=1e-6)
    finally:
        handle.remove()
    assert max(passes) <= bound and sum(passes) == 5 * explain.IG_STEPS


def test_a_watched_train_stage_never_imports_captum_nor_matplotlib():
    import subprocess
    import sys
    code = ("import sys, torch; from cnnlab.train import main; from cnnlab import explain, models;"
            "m = models.build('lenet', 1, 10, 28); x = torch.randn(4, 1, 28, 28);"
            "explain.methods(models.spec('lenet').attribution_layer, 0)['integrated_gradients'](m, x, m(x).argmax(1));"
            "print(sorted(n for n in sys.modules if n in ('captum', 'matplotlib')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def the_patch(model, images, target):
    """The object itself: the planted patch, the only pixels the model's class depends on."""
    mask = torch.zeros(images.shape[0], *images.shape[2:])
    mask[:, 1:7, 1:7] = 1
    return mask


@pytest.mark.parametrize("seed", range(5))
def test_a_verdict_needs_a_margin_over_the_images(patch_model, seed):
    """A map drawn like the random one cannot be told from it, for any seed; the true object's mask
    is faithful for every seed; the intervals and the number of images are recorded."""
    model, x = patch_model
    named = {"another_random": explain.random_map(seed + 100), "object": the_patch, "random": explain.random_map(seed)}
    numbers = explain.assess(model, x, named, seed=seed, randomisation_images=2)[0]
    alike, obj = numbers["another_random"], numbers["object"]
    assert alike["faithfulness"] == "cannot be told from random" and not alike["beats_random"], alike
    assert alike["deletion_minus_random_low"] < 0 < alike["deletion_minus_random_high"]
    assert obj["faithfulness"] == "faithful" and obj["beats_random"], obj
    assert obj["deletion_minus_random_high"] < 0 < obj["insertion_minus_random_low"]
    assert all(n["images"] == 64 for n in numbers.values())
    # the mask is the same map whatever the weights: it fails randomisation, so nothing is trusted
    assert not obj["passes_randomization"] and explain.best(numbers) is None


def test_no_best_when_the_only_faithful_looking_method_is_within_the_spread():
    numbers = {"a": {"faithfulness": "cannot be told from random", "beats_random": False, "passes_randomization": True,
                     "insertion_auc": 0.9, "deletion_auc": 0.1},
               "b": {"faithfulness": "faithful", "beats_random": True, "passes_randomization": True,
                     "insertion_auc": 0.6, "deletion_auc": 0.3}}
    assert explain.best(numbers) == "b"
    numbers["b"]["faithfulness"] = "no better than random"
    assert explain.best(numbers) is None


def test_the_verdict_words_follow_the_intervals():
    assert explain.faithfulness((-0.2, -0.1), (0.1, 0.2)) == "faithful"
    assert explain.faithfulness((-0.2, 0.01), (0.1, 0.2)) == "cannot be told from random"
    assert explain.faithfulness((-0.2, -0.1), (-0.3, -0.1)) == "no better than random"
    assert explain.faithfulness((0.0, 0.0), (0.0, 0.0)) == "cannot be told from random"  # random against itself
    low, high = explain.paired_interval(np.full(50, 0.3), seed=0)
    assert low == pytest.approx(0.3) and high == pytest.approx(0.3)


def test_the_peak_estimate_counts_copies_maps_and_the_largest_pass():
    """A 4x4 image through Flatten and Linear(16, 2): outputs of 64 and 8 bytes, 136 bytes of weights."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    image, outputs, weights = 64, 64 + 8, 136
    pass_ = 10 * explain.IG_STEPS * 4 * (image + outputs)  # 10 images' integrated-gradients points in one pass
    assert explain.peak_bytes(model, (1, 4, 4), 10, 3) == 2 * weights + 10 * (image + 3 * 64) + pass_
    # a pass holds as many values as PASS digits: one 256-pixel colour image at a time
    assert explain.pass_size(3 * 256 * 256) == 1 and explain.pass_size(28 * 28) == explain.PASS
    assert explain.peak_bytes(model, (1, 4, 4), 100, 3) > explain.peak_bytes(model, (1, 4, 4), 10, 3)
    assert explain.pass_size(16) == explain.PASS * 49
    many = explain.peak_bytes(model, (1, 4, 4), 1000, 3)     # 4x4 images: a pass of PASS digits' values
    assert many == 2 * weights + 1000 * (image + 3 * 64) + explain.pass_size(16) * 4 * (image + outputs)
    assert explain.peak_bytes(model, (1, 4, 4), 1000, 6) > many


def test_every_model_of_the_zoo_gets_its_methods():
    """Grad-CAM's two where a spatial layer is declared; the model-agnostic ones for all (the MLP too)."""
    from cnnlab.models import names, spec
    for name in names():
        found = set(explain.methods(spec(name).attribution_layer, 0))
        agnostic = {"integrated_gradients", "input_gradients", "occlusion", "random"}
        assert found == agnostic | ({"gradcam", "guided_gradcam"} if spec(name).attribution_layer else set())
    assert spec("mlp").attribution_layer is None
