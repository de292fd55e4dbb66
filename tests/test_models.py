import pytest
import torch
import torchvision

from cnnlab import CnnlabError, models
from cnnlab.engine.checkpoints import checkpoint, count_parameters, load_checkpoint
from cnnlab.models import build, names


@pytest.mark.parametrize("name", names())
@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32)])
def test_every_model_maps_images_to_class_logits(name, channels, size):
    model = build(name, channels, 10, size)
    out = model(torch.randn(4, channels, size, size))
    assert out.shape == (4, 10)
    out.sum().backward()  # trainable end to end (but for what a model freezes by design)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_parameter_counts_match_the_architectures():
    # 784-256-256-10 MLP: (784*256+256) + (256*256+256) + (256*10+10)
    assert count_parameters(build("mlp", 1, 10, 28)) == 200_960 + 65_792 + 2_570
    # LeNet-5-like: conv6 5x5, conv16 5x5, fc 400-120-84-10
    assert count_parameters(build("lenet", 1, 10, 28)) == 156 + 2_416 + 48_120 + 10_164 + 850
    # conv16 3x3, conv32 3x3, fc 1568-128-10
    assert count_parameters(build("cnn", 1, 10, 28)) == 160 + 4_640 + 200_832 + 1_290


def test_checkpoint_round_trip_loads_with_weights_only(tmp_path):
    model = build("lenet", 1, 10, 28)
    info = {"channels": 1, "classes": list("0123456789"), "image_size": 28, "mean": [0.1], "std": [0.3]}
    path = tmp_path / "lenet.pt"
    torch.save(checkpoint("lenet", model, {}, info), path)
    loaded, ckpt = load_checkpoint(path, torch.device("cpu"))
    x = torch.randn(2, 1, 28, 28)
    # a conv net is loaded in the channels_last layout it is trained and validated in
    assert loaded[0].weight.is_contiguous(memory_format=torch.channels_last)
    model.eval().to(memory_format=torch.channels_last)
    assert torch.equal(loaded(x), model(x))
    assert ckpt["classes"] == info["classes"]


class Evil:
    """Any class that is not a tensor or a plain type: weights_only loading must refuse it."""


def test_foreign_pickles_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": "mlp", "obj": Evil()}, path)
    with pytest.raises(CnnlabError, match="not a cnnlab checkpoint"):
        load_checkpoint(path, torch.device("cpu"))


@pytest.mark.parametrize("name", ["cnn", "lenet"])
def test_pooling_before_the_relu_computes_the_textbook_network(name):
    # The conv blocks run conv -> pool -> ReLU for speed; relu and max commute, so the network must
    # equal the textbook conv -> ReLU -> pool one with the same weights, forward and backward.
    from torch import nn
    from cnnlab.models.blocks import textbook_order
    model = build(name, 1, 10, 28)
    reference = textbook_order(model).eval()
    kinds = [type(layer) for layer in reference]
    for i, kind in enumerate(kinds):
        if kind is nn.Conv2d:
            assert kinds[i + 1:i + 3] == [nn.ReLU, nn.MaxPool2d]
        if kind is nn.MaxPool2d:
            assert kinds[i - 1] is nn.ReLU
    model.eval()
    x = torch.randn(8, 1, 28, 28)
    assert torch.equal(model(x), reference(x))
    grads = []
    for net in (model, reference):
        net.zero_grad()
        net(x).square().sum().backward()
        grads.append([p.grad.clone() for p in net.parameters()])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads))


def test_zoo_parameter_counts_follow_torchvision():
    import torchvision
    # cnn_small: conv8 3x3, conv16 3x3, one linear head 16*7*7 -> 10
    assert count_parameters(build("cnn_small", 1, 10, 28)) == 80 + 1_168 + 7_850
    # AlexNet: torchvision's, minus the first conv's two missing input channels, with a 10-class head
    reference = count_parameters(torchvision.models.alexnet(num_classes=10))
    assert count_parameters(build("alexnet", 1, 10, 28)) == reference - 2 * 64 * 11 * 11
    assert count_parameters(build("alexnet", 3, 10, 32)) == reference
    resnet = count_parameters(torchvision.models.resnet18(num_classes=10))
    assert count_parameters(build("resnet18", 3, 10, 32, stem="imagenet")) == resnet
    assert count_parameters(build("resnet18", 3, 10, 32, stem="cifar")) == resnet - 64 * 3 * (49 - 9)


def test_alexnet_resizes_each_batch_to_its_input_size():
    model = build("alexnet", 1, 10, 28, input_size=100).eval()
    seen = []
    model.features[0].register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    model(torch.randn(2, 1, 28, 28))
    assert seen == [torch.Size([2, 1, 100, 100])]
    assert type(model) is torchvision.models.AlexNet  # torchvision's own class: its state-dict keys


def test_model_options_are_checked_as_their_signatures_declare():
    from conftest import REPO
    import yaml
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    for section, value, message in (("alexnet", {"input_size": 32}, "alexnet.input_size must be an integer >= 63"),
                                    ("mlp", {"hidden": 10**9}, "mlp.hidden must be an integer >= 1 and <= 65536"),
                                    ("cnn", {"dropout": 1.0}, "cnn.dropout must be a finite number >= 0 and < 1"),
                                    ("resnet18", {"stem": "vgg"}, "resnet18.stem must be one of cifar, imagenet")):
        from cnnlab.config.params import validate
        with pytest.raises(CnnlabError, match=message):
            validate({**raw, section: value})


def test_resnet18_stems():
    x = torch.randn(2, 3, 32, 32)
    sizes = {}
    for stem in ("cifar", "imagenet"):
        model = build("resnet18", 3, 10, 32, stem=stem).eval()
        sizes[stem] = model.layer1(model.maxpool(model.relu(model.bn1(model.conv1(x))))).shape[-1]
    assert sizes == {"cifar": 32, "imagenet": 8}


def test_weights_load_from_a_local_state_dict_and_mismatches_are_clear(tmp_path):
    from cnnlab.engine.checkpoints import load_weights
    source = build("cnn_small", 1, 10, 28)
    torch.save(source.state_dict(), tmp_path / "plain.pt")
    target = build("cnn_small", 1, 10, 28)
    load_weights(target, tmp_path / "plain.pt")
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values()))
    with pytest.raises(CnnlabError, match="does not fit this model: 1 shape mismatch .*0.weight"):
        load_weights(build("cnn_small", 3, 10, 28), tmp_path / "plain.pt")
    with pytest.raises(CnnlabError, match="missing.*check the dataset"):
        load_weights(build("lenet", 1, 10, 28), tmp_path / "plain.pt")
    with pytest.raises(CnnlabError, match="weights file not found"):
        load_weights(target, tmp_path / "nope.pt")


def test_airbench_whitens_its_stem_from_the_data_and_keeps_it_frozen():
    from cnnlab.models import spec
    model = build("airbench", 3, 10, 32, width=16)
    torch.manual_seed(0)
    mixing = torch.tensor([[1.0, 0.8, 0.6], [0.0, 0.6, 0.3], [0.0, 0.0, 0.5]])  # correlated channels
    images = torch.einsum("dc,nchw->ndhw", mixing, torch.randn(64, 3, 32, 32))
    spec("airbench").init_from_data(model, images)
    with torch.no_grad():
        out = torch.nn.functional.conv2d(images, model.whiten.weight)  # without the (learned) bias
    covariance = torch.cov(out.transpose(0, 1).flatten(1))
    half = covariance[:12, :12]  # the other 12 filters are these negated
    assert torch.allclose(half, torch.eye(12), atol=0.02), "2x2 patches come out decorrelated with unit variance"
    assert not model.whiten.weight.requires_grad and model.whiten.bias.requires_grad
    assert build("airbench", 3, 10, 32)[-2].in_features == 256  # width 64: airbench94's 64/256/256


def test_resnet_small_is_the_cifar_resnet_20():
    """He et al.'s ResNet-20 layout: 3 stages of 3 BasicBlocks at 16, 32, 64 channels (projection
    shortcuts: 272,474 parameters for CIFAR-10), feature maps 32, 16 and 8 pixels wide."""
    model = build("resnet_small", 3, 10, 32).eval()
    assert count_parameters(model) == 272_474
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) == 1 + 3 * 3 * 2  # the stem and two per block: 19 convolutions and the head make 20 layers
    sizes = []
    for stage in (model[3], model[4], model[5]):
        stage.register_forward_hook(lambda m, i, o: sizes.append(tuple(o.shape[1:])))
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert sizes == [(16, 32, 32), (32, 16, 16), (64, 8, 8)]


@pytest.mark.parametrize("name", names())
def test_a_spec_names_its_layers_and_the_names_find_them(name):
    """Specs name the head and the attribution layer ("fc3", "relu2"), not count them; a Sequential's
    layer names, one per layer, leave the checkpoint's keys as they are."""
    spec = models.spec(name)
    model = build(name, 3, 10, 64)
    if spec.layers:
        assert isinstance(model, torch.nn.Sequential) and len(spec.layers) == len(model)
        assert len(set(spec.layers)) == len(spec.layers)
    for layer in (spec.head, spec.attribution_layer):
        if layer is not None:
            assert not layer.isdigit(), f"models/{name}.py: name the layer, not its position ({layer})"
            model.get_submodule(spec.path(layer))
    assert isinstance(model.get_submodule(spec.path(spec.head)), torch.nn.Linear)
