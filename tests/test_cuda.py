"""CUDA paths: skipped without a GPU; `python benchmarks/gpu.py` runs them on a CUDA machine."""

from __future__ import annotations

import pytest
import torch

from cnnlab.engine.batches import DeviceBudget, DeviceSplit
from cnnlab.engine.checkpoints import checkpoint, load_checkpoint
from cnnlab.engine.inference import autocast_dtype, predict_split
from cnnlab.models import build
from cnnlab.prepare import channel_stats
from cnnlab.runtime import seed_everything
from cnnlab.train.loop import fit
from conftest import synthetic_digits
from test_train import CFG

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
CUDA = torch.device("cuda")


def split(n: int, seed: int, device: torch.device, limit: int | None = None) -> DeviceSplit:
    images, labels = synthetic_digits(n, seed)
    images = torch.from_numpy(images).unsqueeze(1)
    mean, std = channel_stats(images)
    return DeviceSplit(images, torch.from_numpy(labels).long(), mean, std, device, torch.channels_last,
                       DeviceBudget(device, limit))


def trained(limit: int | None, precision: str = "fp32") -> tuple[torch.nn.Module, DeviceSplit]:
    train, val = split(600, 1, CUDA, limit), split(200, 2, CUDA, limit)
    generator = seed_everything(0, deterministic_kernels=True)
    model = build("cnn", 1, 10, 28).to(CUDA, memory_format=torch.channels_last)
    fit(model, train, val, {**CFG, "precision": precision}, generator)
    return model, val


def test_data_lives_on_the_gpu_and_the_fit_learns():
    model, val = trained(None)
    assert val.on_device and val.images.is_cuda and val.labels.is_cuda
    assert predict_split(model, val, 100, keep=False).accuracy > 0.9


def test_images_over_the_budget_stay_in_pinned_host_memory_with_the_same_result():
    on_gpu, val = trained(None)
    from_host, host_val = trained(0)
    assert not host_val.on_device and host_val.images.is_pinned() and host_val.labels.is_cuda
    for a, b in zip(on_gpu.parameters(), from_host.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("precision", ["auto", "fp16"])
def test_mixed_precision_trains(precision):
    assert autocast_dtype("auto", CUDA) in (torch.bfloat16, torch.float16)
    model, val = trained(None, precision)
    assert predict_split(model, val, 100, autocast_dtype(precision, CUDA), keep=False).accuracy > 0.9


def test_a_gpu_checkpoint_loads_on_the_cpu_and_predicts_the_same(tmp_path):
    model, val = trained(None)
    images, labels = synthetic_digits(200, 2)
    stats = channel_stats(torch.from_numpy(images).unsqueeze(1))
    torch.save(checkpoint("cnn", model, {}, {"classes": [str(i) for i in range(10)], "channels": 1,
                                            "image_size": 28, "mean": stats[0], "std": stats[1]}), tmp_path / "c.pt")
    cpu_model, _ = load_checkpoint(tmp_path / "c.pt", torch.device("cpu"), expected="cnn")
    cpu_val = split(200, 2, torch.device("cpu"))
    gpu_predicted = predict_split(model, val, 100).predicted
    assert (predict_split(cpu_model, cpu_val, 100).predicted == gpu_predicted).float().mean() > 0.99
