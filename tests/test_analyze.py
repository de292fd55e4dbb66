import numpy as np
import pytest
import torch
from torch import nn

from cnnlab.analyses.embedding import tsne_2d
from cnnlab.analyses.feature_maps import capture_activations, image_likeness, leaf_modules
from cnnlab.analyses.mistakes import most_confused
from cnnlab.explain import grad_cam
from cnnlab.augment import salt_and_pepper
from cnnlab.engine.batches import DeviceSplit
from cnnlab.engine.inference import embeddings
from cnnlab.prepare import one_per_class
from cnnlab.models import build, names, spec


def test_hooks_capture_one_output_per_layer_with_the_right_shape_and_leave_the_model_unchanged():
    model = build("lenet", 1, 10, 28).eval()
    x = torch.randn(3, 1, 28, 28)
    before = model(x)
    records = capture_activations(model, x)
    expected = [(6, 28, 28), (6, 14, 14), (6, 14, 14), (16, 10, 10), (16, 5, 5), (16, 5, 5), (400,),
                (120,), (120,), (84,), (84,), (10,)]
    assert [tuple(out.shape[1:]) for _, _, out in records] == expected
    assert [m for _, m, _ in records] == [m for _, m in leaf_modules(model)]  # each module exactly once
    assert torch.equal(records[-1][2], before)                               # the last output is the logits
    assert all(not m._forward_hooks for m in model.modules())
    assert torch.equal(model(x), before)


@pytest.mark.parametrize("name", names())
def test_every_model_yields_penultimate_features_and_activations(name):
    model = build(name, 1, 10, 28)
    images = torch.randint(0, 256, (20, 1, 28, 28), dtype=torch.uint8)
    data = DeviceSplit(images, torch.randint(0, 10, (20,)), [0.5], [0.25], torch.device("cpu"))
    features = embeddings(model, model.get_submodule(spec(name).path(spec(name).head)), data, torch.arange(20), 8)
    assert features.shape[0] == 20 and features.dim() == 2
    records = capture_activations(model, data.normalise(images[:2]))
    # every leaf module reports each of its calls (ResNet's blocks call their ReLU twice)
    assert {id(m) for _, m, _ in records} == {id(m) for _, m in leaf_modules(model)}
    assert all(not m._forward_hooks for m in model.modules())


class RegionConv(nn.Conv2d):
    """A convolution that only sees an off-centre 8x16 window: nothing outside can reach the logits."""

    def forward(self, x):
        mask = torch.zeros_like(x[:1, :1])
        mask[..., 2:10, 4:20] = 1
        return super().forward(x) * mask


class RegionOnly(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = RegionConv(1, 4, 3, padding=1)
        self.head = nn.Linear(4, 2)
        with torch.no_grad():  # class 0 rises with the window's activity, class 1 falls
            self.conv.weight.uniform_(0.1, 1.0)
            self.conv.bias.zero_()
            self.head.weight.copy_(torch.tensor([[1.0] * 4, [-1.0] * 4]))
            self.head.bias.zero_()

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def test_grad_cam_highlights_the_only_region_the_prediction_depends_on():
    model = RegionOnly()
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    cam, target, layer = grad_cam(model, "conv", x)
    assert layer == "conv (RegionConv)"
    assert cam.shape == (4, 28, 28) and target.tolist() == [0, 0, 0, 0]
    window = torch.zeros(28, 28, dtype=torch.bool)
    window[2:10, 4:20] = True
    core = torch.zeros_like(window)
    core[4:8, 6:18] = True
    assert (cam[:, ~window] < 1e-6).all()                 # nothing outside the window (rows and columns not swapped)
    assert (cam[:, core] > 0.2).all()                     # the window itself lights up
    assert torch.allclose(cam.flatten(1).max(1).values, torch.ones(4))
    assert all(p.grad is None for p in model.parameters())  # no gradient left behind


@pytest.mark.parametrize("amount", [0.0, 0.05, 0.2])
def test_salt_and_pepper_replaces_the_asked_fraction_of_pixels_with_black_or_white(amount):
    images = torch.full((50, 1, 28, 28), 128, dtype=torch.uint8)
    noisy = salt_and_pepper(images, amount, torch.Generator().manual_seed(0))
    changed = noisy != images
    assert abs(changed.float().mean().item() - amount) < 0.005
    assert set(noisy[changed].unique().tolist()) <= {0, 255}
    if amount:
        salt = (noisy == 255).float().mean().item()
        assert abs(salt - amount / 2) < 0.005
    assert torch.equal(images, torch.full_like(images, 128))  # input untouched


def test_tsne_is_seeded_and_repeatable():
    features = np.random.default_rng(0).normal(size=(60, 8)).astype(np.float32)
    first, second = tsne_2d(features, 30, seed=1), tsne_2d(features, 30, seed=1)
    assert first.shape == (60, 2)
    assert np.array_equal(first, second)


def test_most_confused_orders_mistakes_by_confidence():
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.7, 0.3]])
    labels = torch.tensor([0, 0, 0, 1])
    mistakes = most_confused(probs, labels, 5)
    assert [m["index"] for m in mistakes] == [1, 3, 2]
    assert mistakes[0] == {"index": 1, "actual": 0, "predicted": 1, "confidence": pytest.approx(0.8)}


def test_one_per_class_takes_the_asked_number_of_each_class():
    labels = torch.tensor([0, 1, 2] * 10)
    index = one_per_class(labels, 2, 3, seed=0)
    assert labels[index].tolist() == [0, 0, 1, 1, 2, 2]


def test_image_likeness_is_one_for_the_image_itself_and_low_for_noise():
    images = torch.zeros(4, 1, 28, 28)
    images[:, :, 8:20, 12:16] = 1
    assert image_likeness(images, images.repeat(1, 3, 1, 1)) == pytest.approx(1.0)
    assert abs(image_likeness(images, torch.rand(4, 8, 14, 14, generator=torch.Generator().manual_seed(0)))) < 0.3
    assert image_likeness(images, torch.rand(4, 10)) is None


def test_grad_cam_of_a_trained_lenet_lies_on_the_object():
    """The class of a synthetic digit is the position of its bright block: a trained LeNet's Grad-CAM
    must put at least twice the block's share of the image on it (uniform heat would put exactly that)."""
    from test_train import CFG, splits
    from cnnlab.runtime import seed_everything
    from cnnlab.train.loop import fit
    from cnnlab.analyses.gradcam import mass_on
    train, val = splits(n_train=600)
    generator = seed_everything(0)
    model = build("lenet", 1, 10, 28)
    result = fit(model, train, val, {**CFG, "epochs": 4}, generator)
    assert result["val_accuracy"] > 0.9
    images = val.images[:40]
    cam, predicted, layer = grad_cam(model, spec("lenet").path(spec("lenet").attribution_layer), val.normalise(images))
    assert layer == "5 (ReLU)"  # the last block's output, after pooling and the ReLU
    block = (images[:, 0] >= 180).float()  # the bright block: the only pixels that carry the class
    area = block.mean().item()
    mass = mass_on(cam, block).mean().item()
    assert mass >= 2 * area, (mass, area)
    from cnnlab.explain import guided_grad_cam
    _, guided, _, _ = guided_grad_cam(model, "5", val.normalise(images))
    assert mass_on(guided, block).mean().item() >= 2 * area


@pytest.mark.parametrize("name", ["lenet", "resnet18", "alexnet"])
def test_guided_backprop_leaves_the_model_as_it_was(name):
    """ResNet and AlexNet use in-place ReLUs, which backward hooks refuse: they are switched off for
    the guided pass and restored after it."""
    from cnnlab.explain import guided_grad_cam
    model = build(name, 3, 10, 32).eval()
    flags = [m.inplace for m in model.modules() if isinstance(m, nn.ReLU)]
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    before = model(x)
    cam, guided, target, layer = guided_grad_cam(model, spec(name).path(spec(name).attribution_layer), x)
    assert cam.shape == guided.shape == (2, 32, 32) and guided.min() >= 0 and guided.max() <= 1
    assert [m.inplace for m in model.modules() if isinstance(m, nn.ReLU)] == flags
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules() if m is not model)
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(model(x), before)


def drawn_tiles(fig, kernel: int) -> np.ndarray:
    """The kernels a filters figure draws, as [rows, columns, k, k] (NaN where no tile is)."""
    grid = np.ma.filled(fig.axes[0].images[0].get_array().astype(np.float32), np.nan)
    rows, columns = (grid.shape[0] + 1) // (kernel + 1), (grid.shape[1] + 1) // (kernel + 1)
    return np.stack([np.stack([grid[r * (kernel + 1):r * (kernel + 1) + kernel, c * (kernel + 1):c * (kernel + 1) + kernel]
                               for c in range(columns)]) for r in range(rows)])


def test_a_deeper_layers_filters_are_wrapped_eight_to_a_row_each_on_its_strongest_input():
    import matplotlib.pyplot as plt
    from cnnlab.figures import filters_figure
    weight = torch.randn(20, 6, 3, 3) * 0.1
    strongest = torch.arange(20) % 6
    weight[torch.arange(20), strongest] *= 30  # the kernel each filter weights most
    tiles = drawn_tiles(filters_figure("conv 3", weight, first_layer=False, max_channels=16), 3)
    plt.close("all")
    assert tiles.shape == (3, 8, 3, 3)  # 20 filters: rows of 8, 8, 4
    flat = tiles.reshape(24, 3, 3)
    assert np.allclose(flat[:20], weight[torch.arange(20), strongest].numpy())
    assert np.isnan(flat[20:]).all()  # the unused places stay blank


def test_a_first_layer_on_colour_images_keeps_a_row_per_input_channel():
    import matplotlib.pyplot as plt
    from cnnlab.figures import filters_figure
    weight = torch.randn(16, 3, 5, 5)
    tiles = drawn_tiles(filters_figure("conv 0", weight, first_layer=True, max_channels=16), 5)
    plt.close("all")
    assert tiles.shape == (3, 16, 5, 5) and np.allclose(tiles, weight.transpose(0, 1).numpy())
