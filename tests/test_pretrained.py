"""ImageNet weights through torchvision's weights API, from a torch hub cache (a generated state dict
with torchvision's shapes stands in for the real file: nothing is downloaded here)."""

from pathlib import Path

import pytest
import torch
import torchvision

from cnnlab import CnnlabError
from cnnlab.engine.checkpoints import adapt_pretrained, fetch_pretrained, pretrained_weights
from cnnlab.models import build


def cached(tmp_path, monkeypatch, builder, weights) -> dict:
    """torchvision's architecture with random weights, saved where the hub cache keeps `weights`."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    state = builder().state_dict()
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save(state, folder / Path(weights.url).name)
    return state


def test_resnet18_loads_every_tensor_but_the_head_and_sums_rgb_kernels_for_gray(tmp_path, monkeypatch):
    weights = pretrained_weights("resnet18", "imagenet")
    assert weights is torchvision.models.ResNet18_Weights.DEFAULT
    state = cached(tmp_path, monkeypatch, torchvision.models.resnet18, weights)
    model = build("resnet18", 1, 10, 32, stem="imagenet")
    kept = adapt_pretrained(model, fetch_pretrained(weights))
    assert kept == ["fc.weight", "fc.bias"]  # the 10-class head starts fresh
    own = model.state_dict()
    assert torch.equal(own["conv1.weight"], state["conv1.weight"].sum(dim=1, keepdim=True))
    for key, value in state.items():
        if key not in ("conv1.weight", "fc.weight", "fc.bias"):
            assert torch.equal(own[key], value), key


def test_the_cifar_stem_keeps_its_own_first_convolution(tmp_path, monkeypatch):
    weights = pretrained_weights("resnet18", "IMAGENET1K_V1")
    state = cached(tmp_path, monkeypatch, torchvision.models.resnet18, weights)
    model = build("resnet18", 3, 10, 32, stem="cifar")
    assert adapt_pretrained(model, fetch_pretrained(weights)) == ["conv1.weight", "fc.weight", "fc.bias"]
    assert torch.equal(model.state_dict()["layer4.1.conv2.weight"], state["layer4.1.conv2.weight"])


def test_alexnet_with_colour_data_and_1000_classes_loads_everything(tmp_path, monkeypatch):
    weights = pretrained_weights("alexnet", "AlexNet_Weights.IMAGENET1K_V1")
    state = cached(tmp_path, monkeypatch, torchvision.models.alexnet, weights)
    model = build("alexnet", 3, 1000, 32)
    assert adapt_pretrained(model, fetch_pretrained(weights)) == []
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_offline_without_the_file_names_it_and_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(url, dst, progress=True):
        raise OSError("network unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(CnnlabError, match=r"place resnet18-f37072fd.pth \(from https://download.pytorch.org/models/"
                                          r"resnet18-f37072fd.pth\) in .*torch/hub/checkpoints"):
        fetch_pretrained(pretrained_weights("resnet18", "imagenet"))


@pytest.mark.parametrize("model,value,fragment", [
    ("mlp", "imagenet", r"mlp declares no pretrained weights \(models/mlp.py: spec.pretrained\)"),
    ("resnet18", "IMAGENET9K_V9", "resnet18.weights must be imagenet, a local file or one of IMAGENET1K_V1"),
])
def test_weights_that_do_not_exist_are_one_line(model, value, fragment):
    with pytest.raises(CnnlabError, match=fragment):
        pretrained_weights(model, value)


def test_train_with_imagenet_weights_and_a_frozen_backbone(tmp_path, monkeypatch):
    """Only the head learns; the checkpoint carries ImageNet's normalisation for the later stages."""
    from conftest import base_params, colour_digits, train_outputs
    from cnnlab.prepare import prepare, save_prepared
    from cnnlab.train.main import train_model
    weights = pretrained_weights("resnet18", "imagenet")
    state = cached(tmp_path, monkeypatch, torchvision.models.resnet18, weights)
    images, labels = colour_digits(120, seed=0)
    data = (torch.from_numpy(images), torch.from_numpy(labels).long())
    params = base_params()
    params["prepare"].update(val_fraction=0.25)
    save_prepared(prepare(data, None, tuple(str(i) for i in range(10)), params["prepare"]), tmp_path / "prepared")
    params["train"].update(epochs=1, batch_size=32, progress=False)
    params["resnet18"].update(weights="imagenet", freeze=True, stem="imagenet")
    ckpt, metrics, _, _ = train_outputs(train_model("resnet18", params, tmp_path / "prepared"), tmp_path)
    assert metrics["parameters"] == 512 * 10 + 10  # trainable: the head
    assert ckpt["mean"] == [0.485, 0.456, 0.406] and ckpt["std"] == [0.229, 0.224, 0.225]
    for key in ("conv1.weight", "layer3.0.conv1.weight"):
        assert torch.equal(ckpt["state_dict"][key], state[key])
    assert not torch.equal(ckpt["state_dict"]["fc.weight"], torch.zeros_like(ckpt["state_dict"]["fc.weight"]))
