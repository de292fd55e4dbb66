import pytest
import torch
from torch import nn

from cnnlab.batches import DeviceSplit
from cnnlab.models import build
from cnnlab.prepare import channel_stats
from cnnlab.runtime import seed_everything
from cnnlab.train import EarlyStopping, evaluate_split, fit
from conftest import synthetic_digits

CFG = {"epochs": 3, "batch_size": 32, "optimizer": "adam", "lr": 3e-3, "weight_decay": 0.0, "momentum": 0.9,
       "nesterov": False, "scheduler": "none", "step_size": 1, "gamma": 0.5, "patience": 0,
       "eval_batch_size": 100, "progress": False, "precision": "fp32", "label_smoothing": 0.0,
       "augment": {"crop_padding": 0, "hflip": False, "shift": 0.0, "scale": 0.0, "noise": 0.0},
       "compile": False, "seed": 0}


def splits(n_train=400, n_val=200):
    (xt, yt), (xv, yv) = synthetic_digits(n_train, 1), synthetic_digits(n_val, 2)
    xt, xv = torch.from_numpy(xt).unsqueeze(1), torch.from_numpy(xv).unsqueeze(1)
    mean, std = channel_stats(xt)
    cpu = torch.device("cpu")
    return (DeviceSplit(xt, torch.from_numpy(yt).long(), mean, std, cpu),
            DeviceSplit(xv, torch.from_numpy(yv).long(), mean, std, cpu))


def test_batches_are_normalised_and_cover_each_sample_once():
    train, _ = splits()
    g = torch.Generator().manual_seed(0)
    seen = torch.cat([y for _, y in train.batches(64, g)])
    assert sorted(seen.tolist()) == sorted(train.labels.tolist())
    x = torch.cat([x for x, _ in train.batches(1000)])
    assert abs(x.mean().item()) < 1e-3 and abs(x.std().item() - 1) < 1e-2


def test_early_stopping_stops_after_patience_and_restores_the_best_weights():
    model = nn.Linear(2, 1)
    stopper = EarlyStopping(patience=2)
    losses = [1.0, 0.5, 0.7, 0.4, 0.6, 0.8, 0.1]
    stopped_at = None
    for epoch, loss in enumerate(losses, start=1):
        with torch.no_grad():
            model.weight.fill_(epoch)
        if stopper.update(epoch, loss, model):
            stopped_at = epoch
            break
    assert stopped_at == 6 and stopper.best_epoch == 4
    stopper.restore(model)
    assert torch.all(model.weight == 4)


def test_zero_patience_never_stops():
    stopper = EarlyStopping(patience=0)
    assert not any(stopper.update(e, float(e), nn.Linear(1, 1)) for e in range(1, 20))


@pytest.mark.parametrize("optimizer,scheduler", [("adam", "onecycle"), ("sgd", "step"), ("adamw", "cosine")])
def test_fit_learns_and_records_history(optimizer, scheduler):
    train, val = splits()
    generator = seed_everything(0)
    model = build("lenet", 1, 10, 28)
    lr = 0.05 if optimizer == "sgd" else 3e-3
    result = fit(model, train, val, {**CFG, "optimizer": optimizer, "scheduler": scheduler, "lr": lr}, generator)
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    assert result.val_accuracy > 0.5  # chance is 0.1
    assert evaluate_split(model, val, 100)[1] == pytest.approx(result.val_accuracy)
    assert result.images_per_second > 0


def test_same_seed_same_result():
    train, val = splits()
    runs = []
    for _ in range(2):
        generator = seed_everything(7)
        model = build("cnn", 1, 10, 28)
        runs.append(fit(model, train, val, CFG, generator).history)
    strip = [[{k: v for k, v in h.items() if k != "seconds"} for h in run] for run in runs]
    assert strip[0] == strip[1]


def test_best_weights_are_restored_after_fit():
    train, val = splits()
    generator = seed_everything(0)
    model = build("mlp", 1, 10, 28)
    result = fit(model, train, val, {**CFG, "epochs": 4, "lr": 0.05}, generator)  # noisy: val loss jumps
    loss, _ = evaluate_split(model, val, 100)
    assert loss == pytest.approx(result.best_val_loss, rel=1e-5)


@pytest.mark.parametrize("name,auto", [("mlp", False), ("cnn", True), ("lenet", True)])
def test_channels_last_is_chosen_for_conv_nets_and_can_be_forced(name, auto):
    from cnnlab.train import uses_channels_last
    model = build(name, 1, 10, 28)
    assert uses_channels_last(model, "auto") is auto
    assert uses_channels_last(model, "channels_last") is True
    assert uses_channels_last(model, "contiguous") is False


def test_channels_last_batches_train_to_the_same_result():
    images = torch.randint(0, 256, (96, 3, 12, 12), dtype=torch.uint8)
    labels = torch.randint(0, 10, (96,))
    cpu = torch.device("cpu")
    results = []
    for layout in (torch.contiguous_format, torch.channels_last):
        data = DeviceSplit(images, labels, [0.5] * 3, [0.25] * 3, cpu, layout)
        x, _ = next(data.batches(32))
        assert x.is_contiguous(memory_format=layout)
        seed_everything(0)
        model = build("cnn", 3, 10, 12).to(memory_format=layout)
        fit(model, data, data, {**CFG, "epochs": 2}, torch.Generator().manual_seed(0))
        results.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.allclose(results[0], results[1], atol=1e-4)


def test_precision_auto_is_mixed_on_cuda_only():
    from cnnlab.train import autocast_dtype
    assert autocast_dtype("auto", torch.device("cpu")) is None
    assert autocast_dtype("fp32", torch.device("cpu")) is None
    assert autocast_dtype("bf16", torch.device("cpu")) is torch.bfloat16
    if torch.cuda.is_available():
        assert autocast_dtype("auto", torch.device("cuda")) in (torch.bfloat16, torch.float16)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_like_fp32(precision):
    # The autocast and grad-scaler path (CUDA's default) runs on CPU too, so it is tested here.
    train, val = splits()
    accuracies = {}
    for mode in ("fp32", precision):
        seed_everything(0)
        model = build("lenet", 1, 10, 28)
        result = fit(model, train, val, {**CFG, "precision": mode}, torch.Generator().manual_seed(0))
        assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay fp32
        accuracies[mode] = result.val_accuracy
    assert accuracies[precision] > 0.8
    assert abs(accuracies[precision] - accuracies["fp32"]) < 0.1
