import math

import pytest
import torch
from torch import nn

from cnnlab.engine.batches import DeviceSplit
from cnnlab.engine.checkpoints import count_parameters
from cnnlab.models import build, names
from cnnlab.config.params import model_kwargs
from cnnlab.prepare import channel_stats
from cnnlab.runtime import seed_everything
from cnnlab.losses.cross_entropy import loss as cross_entropy
from cnnlab.train.loop import evaluate, fit
from cnnlab.train.main import train_model
from cnnlab.train.optim import EarlyStopping
from conftest import synthetic_digits, train_outputs

CFG = {"epochs": 3, "batch_size": 32, "optimizer": "adam", "lr": 3e-3, "weight_decay": 0.0, "betas": [0.9, 0.999],
       "momentum": 0.9,
       "nesterov": False, "scheduler": "none", "step_size": 1, "gamma": 0.5, "patience": 0,
       "eval_batch_size": 100, "progress": False, "precision": "fp32", "loss": "cross_entropy", "label_smoothing": 0.0,
       "augment": {"crop_padding": 0, "hflip": False, "shift": 0.0, "scale": 0.0, "noise": 0.0},
       "compile": False, "seed": 0, "tta": "none"}


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
    assert [h["epoch"] for h in result["history"]] == [1, 2, 3]
    assert result["val_accuracy"] > 0.5  # chance is 0.1
    assert evaluate(model, cross_entropy, val, CFG)[1] == pytest.approx(result["val_accuracy"])
    assert result["images_per_second"] > 0


def test_same_seed_same_result():
    train, val = splits()
    runs = []
    for _ in range(2):
        generator = seed_everything(7)
        model = build("cnn", 1, 10, 28)
        runs.append(fit(model, train, val, CFG, generator)["history"])
    strip = [[{k: v for k, v in h.items() if k != "seconds"} for h in run] for run in runs]
    assert strip[0] == strip[1]


def test_best_weights_are_restored_after_fit():
    train, val = splits()
    generator = seed_everything(0)
    model = build("mlp", 1, 10, 28)
    result = fit(model, train, val, {**CFG, "epochs": 4, "lr": 0.05}, generator)  # noisy: val loss jumps
    loss, _ = evaluate(model, cross_entropy, val, CFG)
    assert loss == pytest.approx(result["best_val_loss"], rel=1e-5)


@pytest.mark.parametrize("name,auto", [("mlp", False), ("cnn", True), ("lenet", True)])
def test_channels_last_is_chosen_for_conv_nets_and_can_be_forced(name, auto):
    from cnnlab.engine.inference import uses_channels_last
    model = build(name, 1, 10, 28)
    assert uses_channels_last(model, "auto") is auto
    assert uses_channels_last(model, "channels_last") is True
    assert uses_channels_last(model, "contiguous") is False


def test_channels_last_batches_train_to_the_same_result():
    images = torch.randint(0, 256, (96, 3, 12, 12), dtype=torch.uint8)
    labels = torch.randint(0, 10, (96,))
    cpu = torch.device("cpu")
    results = []
    for memory_format in (torch.contiguous_format, torch.channels_last):
        data = DeviceSplit(images, labels, [0.5] * 3, [0.25] * 3, cpu, memory_format)
        x, _ = next(data.batches(32))
        assert x.is_contiguous(memory_format=memory_format)
        seed_everything(0)
        model = build("cnn", 3, 10, 12).to(memory_format=memory_format)
        fit(model, data, data, {**CFG, "epochs": 2}, torch.Generator().manual_seed(0))
        results.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.allclose(results[0], results[1], atol=1e-4)


def test_precision_auto_is_bf16_on_cpus_that_compute_it(tmp_path, monkeypatch):
    from cnnlab.engine import inference
    from cnnlab.engine.inference import autocast_dtype, cpu_has_bf16
    zen4 = tmp_path / "zen4"
    zen4.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n")
    avx2 = tmp_path / "avx2"
    avx2.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n")
    assert cpu_has_bf16(str(zen4)) and not cpu_has_bf16(str(avx2)) and not cpu_has_bf16(str(tmp_path / "none"))
    for has_bf16, expected in ((True, torch.bfloat16), (False, None)):
        monkeypatch.setattr(inference, "cpu_has_bf16", lambda: has_bf16)
        assert autocast_dtype("auto", torch.device("cpu")) is expected
        assert autocast_dtype("fp32", torch.device("cpu")) is None
        assert autocast_dtype("bf16", torch.device("cpu")) is torch.bfloat16
        assert autocast_dtype("auto", torch.device("mps")) is None
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
        accuracies[mode] = result["val_accuracy"]
    assert accuracies[precision] > 0.8
    assert abs(accuracies[precision] - accuracies["fp32"]) < 0.1


def prepared_dir(tmp_path, channels, n_train=60):
    """A prepared dataset on disk (as the prepare stage writes it) with 1 or 3 channels."""
    from conftest import colour_digits
    from cnnlab.prepare import prepare, save_prepared
    size = 28 if channels == 1 else 32
    if channels == 1:
        (xt, yt), (xs, ys) = synthetic_digits(n_train, 1), synthetic_digits(20, 2)
        xt, xs = xt[:, None], xs[:, None]
    else:
        (xt, yt), (xs, ys) = colour_digits(n_train, 1, size), colour_digits(20, 2, size)
    options = {"train_size": None, "test_size": None, "samples_per_class": None, "val_fraction": 0.25,
               "val_size": None, "class_fraction": {}, "seed": 0}
    splits = prepare((torch.from_numpy(xt), torch.from_numpy(yt).long()),
                     (torch.from_numpy(xs), torch.from_numpy(ys).long()), tuple("0123456789"), options)
    save_prepared(splits, tmp_path / "prepared")
    return tmp_path / "prepared"


@pytest.mark.parametrize("name", names())
@pytest.mark.parametrize("channels", [1, 3])
def test_every_model_trains_saves_and_reloads_through_train_model(tmp_path, name, channels):
    from conftest import base_params
    from cnnlab.engine.checkpoints import load_checkpoint
    params = base_params()
    params[name] = {**params[name], "epochs": 1, "batch_size": 16, "progress": False, "eval_batch_size": 64}
    prepared = prepared_dir(tmp_path, channels)
    ckpt, metrics, history, steps = train_outputs(train_model(name, params, prepared), tmp_path)
    assert metrics["parameters"] == count_parameters(build(name, channels, 10, 28 if channels == 1 else 32,
                                                           **model_kwargs(params, name)))
    assert len(history) == 1 and [s["step"] for s in steps] == [1, 2, 3]   # 45 images in batches of 16
    assert all(math.isfinite(s["loss"]) and 0 <= s["accuracy"] <= 1 for s in steps)
    torch.save(ckpt, tmp_path / "model.pt")
    model, _ = load_checkpoint(tmp_path / "model.pt", torch.device("cpu"))
    assert model(torch.zeros(2, channels, 28 if channels == 1 else 32, 28 if channels == 1 else 32)).shape == (2, 10)


def test_per_step_history_matches_the_epoch_means():
    train, val = splits()
    result = fit(build("mlp", 1, 10, 28), train, val, {**CFG, "epochs": 2}, torch.Generator().manual_seed(0))
    assert len(result["steps"]) == 2 * train.num_batches(CFG["batch_size"])
    first = [s for s in result["steps"] if s["epoch"] == 1]
    sizes = [32] * (len(first) - 1) + [len(train) - 32 * (len(first) - 1)]
    mean_loss = sum(s["loss"] * n for s, n in zip(first, sizes)) / len(train)
    assert mean_loss == pytest.approx(result["history"][0]["train_loss"], rel=1e-5)


def test_label_smoothing_and_augmentation_change_training_but_still_learn():
    train, val = splits()
    results = {}
    for label, extra in (("plain", {}), ("smooth", {"label_smoothing": 0.1}),
                         ("augmented", {"augment": {**CFG["augment"], "shift": 0.05, "noise": 0.02}})):
        seed_everything(0)
        result = fit(build("lenet", 1, 10, 28), train, val, {**CFG, **extra}, torch.Generator().manual_seed(0))
        results[label] = result
    assert results["smooth"]["history"][0]["train_loss"] != results["plain"]["history"][0]["train_loss"]
    assert results["augmented"]["history"][0]["train_loss"] != results["plain"]["history"][0]["train_loss"]
    assert all(r["val_accuracy"] > 0.8 for r in results.values())


def test_starting_weights_come_from_the_model_section(tmp_path):
    from conftest import base_params
    params = base_params()
    prepared = prepared_dir(tmp_path, 1)
    start = build("cnn_small", 1, 10, 28)
    torch.save(start.state_dict(), tmp_path / "start.pt")
    params["cnn_small"] = {"epochs": 1, "lr": 1e-9, "progress": False, "weights": str(tmp_path / "start.pt"),
                           "scheduler": "none", "optimizer": "sgd", "momentum": 0.0}
    ckpt, _, _, _ = train_outputs(train_model("cnn_small", params, prepared), tmp_path)
    for key, value in start.state_dict().items():  # a 1e-9 step leaves the loaded weights in place
        assert torch.allclose(ckpt["state_dict"][key], value, atol=1e-6)


def test_splits_over_the_device_budget_stay_in_host_memory_with_the_same_results(tmp_path):
    """data.max_device_bytes: a split that does not fit stays in host memory and its batches are
    copied per step; the batches, and so the weights and every metric, are the same."""
    from conftest import base_params
    from cnnlab.evaluate import evaluate_model
    params = base_params()
    params["lenet"] = {"epochs": 2, "batch_size": 16, "progress": False, "eval_batch_size": 8,
                       "augment": {**params["train"]["augment"], "crop_padding": 2, "noise": 0.05}}  # device generator too
    prepared = prepared_dir(tmp_path, 1)
    train_bytes = 45 * 28 * 28  # fits the training split exactly, leaving nothing for validation
    runs = {}
    for budget in (None, 0, train_bytes):
        params["data"] = {**params["data"], "max_device_bytes": budget}
        seed_everything(0)
        ckpt, metrics, history, steps = train_outputs(train_model("lenet", params, prepared), tmp_path)
        assert metrics["train_images"] == 45
        torch.save(ckpt, tmp_path / f"lenet-{budget}.pt")
        test = evaluate_model("lenet", tmp_path / f"lenet-{budget}.pt", prepared, 7, budget).json["metrics"]
        runs[budget] = (ckpt["state_dict"], metrics["data_on_device"], history, steps, test)
    assert runs[None][1] == {"train": True, "val": True}
    assert runs[0][1] == {"train": False, "val": False}
    assert runs[train_bytes][1] == {"train": True, "val": False}
    for budget in (0, train_bytes):
        state, _, history, steps, test = runs[budget]
        assert all(torch.equal(state[k], v) for k, v in runs[None][0].items())
        assert [s["loss"] for s in steps] == [s["loss"] for s in runs[None][3]]
        assert [h["val_loss"] for h in history] == [h["val_loss"] for h in runs[None][2]]
        assert test["accuracy"] == runs[None][4]["accuracy"] and test["loss"] == runs[None][4]["loss"]


def test_train_model_reads_ahead_in_the_train_split_only_with_the_same_result(tmp_path, monkeypatch):
    from conftest import base_params
    from cnnlab.train import readahead
    params = base_params()
    params["lenet"] = {**params["lenet"], "epochs": 1, "batch_size": 16, "progress": False, "watch": False}
    prepared = prepared_dir(tmp_path, 3)
    (tmp_path / "plain").mkdir(), (tmp_path / "ahead").mkdir()
    plain, _, _, _ = train_outputs(train_model("lenet", params, prepared), tmp_path / "plain")
    asked = []
    monkeypatch.setattr(readahead, "PAGE", 1024)  # the 3 KiB rows of these 32x32 colour images qualify
    monkeypatch.setattr(readahead.Readahead, "__call__", lambda self, rows: asked.append((self.npy_file.name, rows)))
    ahead, _, _, _ = train_outputs(train_model("lenet", params, prepared), tmp_path / "ahead")
    assert {name for name, _ in asked} == {"train_images.npy"}  # validation goes in order: no readahead
    assert sorted(torch.cat([rows for _, rows in asked]).unique().tolist()) == list(range(45))
    assert all(torch.equal(plain["state_dict"][k], ahead["state_dict"][k]) for k in plain["state_dict"])


def test_freeze_and_embeddings_take_the_declared_head_not_the_last_layer_with_parameters(tmp_path, monkeypatch):
    """A model that ends in a norm layer: structural guessing would take the BatchNorm as the head;
    the spec declares the Linear before it, and freeze and the embeddings follow the declaration."""
    from torch import nn

    from cnnlab import models
    from cnnlab.engine.batches import DeviceSplit
    from cnnlab.engine.inference import embeddings
    from conftest import base_params

    def normtail(in_channels, num_classes, image_size):
        return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size ** 2, 16), nn.ReLU(),
                             nn.Linear(16, num_classes), nn.BatchNorm1d(num_classes))

    declared = models.ModelSpec(build=normtail, head="3", attribution_layer=None)
    real = models.spec
    monkeypatch.setattr(models, "spec", lambda name: declared if name == "normtail" else real(name))
    params = base_params()
    params["normtail"] = {"freeze": True, "epochs": 1, "batch_size": 16, "progress": False, "eval_batch_size": 64}
    ckpt, metrics, _, _ = train_outputs(train_model("normtail", params, prepared_dir(tmp_path, 1)), tmp_path)
    assert metrics["parameters"] == 16 * 10 + 10  # only the declared head trained, not the BatchNorm's 20
    model = normtail(1, 10, 28)
    model.load_state_dict(ckpt["state_dict"])
    images = torch.randint(0, 256, (6, 1, 28, 28), dtype=torch.uint8)
    data = DeviceSplit(images, torch.zeros(6, dtype=torch.long), [0.5], [0.25], torch.device("cpu"))
    features = embeddings(model, model.get_submodule(declared.head), data, torch.arange(6), 4)
    assert features.shape == (6, 16)  # the head's input; the BatchNorm's would be 10-d
