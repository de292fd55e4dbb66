"""On the real MNIST files (skipped when ../shared/datasets is absent)."""


import pytest

from cnnlab.datasets import formats as datasets
from cnnlab.evaluate import evaluate_model
from cnnlab.prepare import prepare, save_prepared
from cnnlab.train.main import train_model
from conftest import base_params, train_outputs


@pytest.mark.slow
def test_lenet_two_epochs_reaches_98_5_percent(tmp_path, real_mirror):
    import torch
    raw = datasets.fetch("mnist", tmp_path / "raw", real_mirror, verify=True)
    assert raw.is_dir()
    params = base_params()
    params["train"].update(epochs=2, progress=False)
    train, test, classes, _ = datasets.decode_all("mnist", tmp_path / "raw")
    splits = prepare(train, test, classes, params["prepare"])
    save_prepared(splits, tmp_path / "prepared")
    checkpoint, metrics, history, _ = train_outputs(train_model("lenet", params, tmp_path / "prepared"), tmp_path)
    torch.save(checkpoint, tmp_path / "lenet.pt")
    result = evaluate_model("lenet", tmp_path / "lenet.pt", tmp_path / "prepared", 1000)
    assert len(history) == 2
    assert result.json["metrics"]["accuracy"] >= 0.985, result.json["metrics"]
    # the Grad-CAM paper's fine map on the trained LeNet: at least twice the digit's share of the image
    # lies on the digit's pixels (Grad-CAM alone is as coarse as LeNet's last 5x5 block)
    from cnnlab.analyses.gradcam import mass_on
    from cnnlab.explain import guided_grad_cam
    from cnnlab.engine.batches import DeviceSplit
    from cnnlab.engine.checkpoints import load_checkpoint
    model, ckpt = load_checkpoint(tmp_path / "lenet.pt", torch.device("cpu"))
    images, labels = splits["test"][0][:200], splits["test"][1][:200]
    test = DeviceSplit(images, labels, ckpt["mean"], ckpt["std"], torch.device("cpu"))
    _, guided, _, layer = guided_grad_cam(model, "5", test.normalise(images))
    digit = (images[:, 0] > 127).float()
    mass, area = mass_on(guided, digit).mean().item(), digit.mean().item()
    assert layer == "5 (ReLU)" and mass >= 2 * area, (layer, mass, area)
