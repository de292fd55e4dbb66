import copy
import re

import pytest

from cnnlab import CnnlabError
from cnnlab.config.params import load, model_kwargs, read_yaml, train_config, validate
from conftest import REPO


@pytest.fixture
def raw():
    import yaml
    return yaml.safe_load((REPO / "params.yaml").read_text())


def error_for(raw) -> str:
    with pytest.raises(CnnlabError) as err:
        validate(raw)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_the_shipped_params_are_valid():
    params = load(REPO / "params.yaml")
    assert params["models"] == ["mlp", "cnn", "lenet"]


def test_yaml12_floats_such_as_dvc_writes_them(tmp_path):
    # `dvc exp run -S train.lr=0.0005` writes 5.0e-4 or 5e-4; PyYAML's YAML 1.1 reads "5e-4" as a string.
    text = (REPO / "params.yaml").read_text()
    text, n = re.subn(r"(?m)^(  lr:) [0-9.e-]+", r"\1 5e-4", text, count=1)
    assert n == 1
    (tmp_path / "params.yaml").write_text(text)
    assert load(tmp_path / "params.yaml")["train"]["lr"] == 0.0005


@pytest.mark.parametrize("edit,expected", [
    (lambda r: r["train"].update(epochs=0), "train.epochs must be an integer >= 1 and <= 10000; got 0"),
    (lambda r: r["train"].update(epochs=-3), "train.epochs must be an integer >= 1 and <= 10000; got -3"),
    (lambda r: r["train"].update(lr="fast"), "train.lr must be a finite number > 0 and <= 10; got 'fast'"),
    (lambda r: r["train"].update(optimizer="rmsprop"), "train.optimizer must be one of adam, adamw, sgd; got 'rmsprop'"),
    (lambda r: r["train"].update(memory_format="nhwc"),
     "train.memory_format must be one of auto, channels_last, contiguous; got 'nhwc'"),
    (lambda r: r["analyze"].update(noise_levels=[0, 1.5]),
     "analyze.noise_levels must be a non-empty list of numbers from 0 to 1; got [0, 1.5]"),
    (lambda r: r["prepare"].update(class_fraction={3: 0}),
     "prepare.class_fraction must be a mapping of class index to a fraction in (0, 1]"),
    (lambda r: r.update(models=["mlp", "vgg"]), "models must be a non-empty list of distinct names from airbench, alexnet, cnn, cnn_small, lenet, mlp, resnet18"),
    (lambda r: r.update(trian={}), "unknown key 'trian'"),
    (lambda r: r["train"].update(epoch=3), "unknown key 'train.epoch' (allowed: epochs, batch_size"),
    (lambda r: r["lenet"].update(dropout=0.1) if isinstance(r["lenet"], dict) else r.update(lenet={"dropout": 0.1}),
     "unknown key 'lenet.dropout'"),
    (lambda r: r["mlp"].update(dropout=1.5), "mlp.dropout must be a finite number >= 0 and < 1; got 1.5"),
    (lambda r: r["prepare"].update(val_fraction=1.0), "prepare.val_fraction must be a finite number > 0 and < 1"),
    (lambda r: r["data"].pop("dataset"), "missing key 'data.dataset'"),
])
def test_bad_params_name_the_key_and_the_allowed_values(raw, edit, expected):
    edit(raw)
    assert expected in error_for(raw)


def test_model_sections_override_shared_defaults(raw):
    raw["lenet"] = {"epochs": 2, "lr": 0.01}
    params = validate(copy.deepcopy(raw))
    assert train_config(params, "lenet")["epochs"] == 2
    assert train_config(params, "lenet")["lr"] == 0.01
    assert train_config(params, "mlp")["epochs"] == raw["train"]["epochs"]
    assert model_kwargs(params, "mlp") == {"dropout": raw["mlp"]["dropout"]}
    assert model_kwargs(params, "lenet") == {}


def test_invalid_yaml_is_one_line(tmp_path):
    (tmp_path / "params.yaml").write_text("train: [unclosed\n")
    with pytest.raises(CnnlabError, match=r"not valid YAML at line \d"):
        load(tmp_path / "params.yaml")


@pytest.mark.parametrize("edit,expected", [
    (lambda r: r["train"].update(lr=float("inf")), "train.lr must be a finite number > 0 and <= 10; got inf"),
    (lambda r: r["train"].update(weight_decay=float("inf")), "train.weight_decay must be a finite number"),
    (lambda r: r["train"].update(gamma=float("nan")), "train.gamma must be a finite number"),
    (lambda r: r.update(lenet=False), "lenet must be a mapping of"),
    (lambda r: r.update(lenet=0), "lenet must be a mapping of"),
    (lambda r: r.update(lenet=[]), "lenet must be a mapping of"),
    (lambda r: r.update(models=[["mlp"]]), "models must be a non-empty list of distinct names"),
    (lambda r: r["mlp"].update(hidden=10**9), "mlp.hidden must be an integer >= 1 and <= 65536"),
    (lambda r: r["data"].update(image_size=10**6), "data.image_size must be an integer >= 8 and <= 1024"),
    (lambda r: r["report"].update(dpi=10**6), "report.dpi must be an integer >= 30 and <= 300"),
])
def test_non_finite_and_unbounded_values_are_refused(raw, edit, expected):
    edit(raw)
    assert expected in error_for(raw)


def test_duplicate_keys_are_refused_as_dvc_refuses_them(tmp_path):
    text = (REPO / "params.yaml").read_text().replace("report:\n", "report:\n  dpi: 50\n", 1)
    (tmp_path / "params.yaml").write_text(text)
    with pytest.raises(CnnlabError, match=r"not valid YAML at line \d+ \(duplicate key 'dpi': keep one\)"):
        load(tmp_path / "params.yaml")


def test_a_stage_sees_only_the_params_dvc_yaml_declares_for_it():
    from cnnlab.config.params import for_stage
    train = for_stage("train", "lenet", REPO / "params.yaml")
    assert set(train) == {"data", "train", "lenet"} and set(train["data"]) == {"max_device_bytes"}
    assert train["train"]["epochs"] >= 1
    with pytest.raises(CnnlabError, match="stage 'train' reads params 'analyze' but does not declare it"):
        train["analyze"]
    samples = for_stage("samples", path=REPO / "params.yaml")
    assert set(samples["analyze"]) == {"seed", "dpi"}
    with pytest.raises(CnnlabError, match="stage 'samples' reads params 'analyze.tsne_samples'"):
        samples["analyze"]["tsne_samples"]


def test_params_load_without_torch_or_any_model_module():
    """Every stage validates params.yaml; a stage that builds no model must not import torch
    (seconds) nor any model's module (its dvc.yaml deps would then name every model's file)."""
    import subprocess
    import sys
    code = ("import sys, cnnlab.config.params; cnnlab.config.params.for_stage('report'); cnnlab.config.params.for_stage('download');"
            "print(sorted(m for m in sys.modules if m in ('torch', 'torchvision', 'sklearn', 'matplotlib') "
            "or m.startswith('cnnlab.models.')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_model_stage_imports_only_its_own_model_and_checks_its_options(tmp_path):
    import subprocess
    import sys
    code = ("import sys, cnnlab.config.params; cnnlab.config.params.for_stage('train', 'lenet');"
            "print(sorted(m for m in sys.modules if m.startswith('cnnlab.models.')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['cnnlab.models.lenet']"
    # a bad option of another model is left to that model's own stages, which name it
    raw = read_yaml((REPO / "params.yaml").read_text())
    raw["mlp"]["hiden"] = 3
    with pytest.raises(CnnlabError, match="unknown key 'mlp.hiden'"):
        validate(raw, built=("mlp",))
    assert validate(raw, built=("lenet",))["mlp"]["hiden"] == 3
    raw["mlp"]["lr"] = "fast"  # a shared train: key is checked in every stage
    with pytest.raises(CnnlabError, match="mlp.lr must be a finite number"):
        validate(raw, built=())


def test_the_dataset_is_checked_against_the_catalogue_by_the_stages_that_read_it():
    """params.py does not import the dataset catalogue (every stage would then depend on it, and
    adding a dataset would retrain every model); download and prepare check the name."""
    from cnnlab.datasets import DATASETS
    from cnnlab.config.params import require_choice
    with pytest.raises(CnnlabError, match="data.dataset must be one of mnist, fashion_mnist, kmnist, cifar10, "
                                          "cifar100, svhn, folder; got 'imagenet'"):
        require_choice("data.dataset", "imagenet", DATASETS)
    assert require_choice("data.dataset", "svhn", DATASETS) == "svhn"


def test_the_recipe_line_says_where_each_value_comes_from():
    """The design card's `-S train.epochs=1` does nothing for a model whose own section sets epochs:
    the train stage's first line says so."""
    from cnnlab.config.params import describe_recipe
    params = load(REPO / "params.yaml")
    params["train"]["epochs"] = 1
    line = describe_recipe(params, "resnet18")
    assert line.startswith("resnet18 (stem cifar): epochs 12 from resnet18:, overriding train.epochs 1; batch_size 128; ")
    params["airbench"]["width"] = 48
    assert describe_recipe(params, "airbench").startswith("airbench (width 48): epochs 16 from airbench:")
    assert "optimizer adamw from resnet18:, overriding train.optimizer adam" in line
    assert "momentum" not in line and "weights" not in line  # not used by adamw; unset
    line = describe_recipe(params, "lenet")
    assert line.startswith("lenet: epochs 1; batch_size 128; optimizer adam; lr 0.01 from lenet:, overriding train.lr ")
    params["lenet"]["augment"] = {**params["train"]["augment"], "shift": 0.1}
    assert "augment shift=0.1 from lenet:, overriding train.augment off" in describe_recipe(params, "lenet")


def test_the_recipe_line_says_which_schedule_won_and_every_model_setting():
    """With train.step_size 3 and gamma 0.1 against resnet18's own 10 and 0.5, the line says which
    won; a model section's seed, nesterov, eval_batch_size, memory_format, compile and loss are shown."""
    from cnnlab.config.params import describe_recipe
    params = load(REPO / "params.yaml")
    params["train"].update(scheduler="step", step_size=3, gamma=0.1)
    line = describe_recipe(params, "resnet18")
    assert "step_size 10 from resnet18:, overriding train.step_size 3" in line
    assert "gamma 0.5 from resnet18:, overriding train.gamma 0.1" in line
    assert "; step_size 3; gamma 0.1;" in describe_recipe(params, "mlp")
    params["train"]["scheduler"] = "cosine"
    assert "step_size" not in describe_recipe(params, "mlp") and "gamma" not in describe_recipe(params, "mlp")
    params["lenet"].update(optimizer="sgd", seed=3, nesterov=True, eval_batch_size=64, memory_format="contiguous",
                           compile=True, loss="cross_entropy")
    line = describe_recipe(params, "lenet")
    for shown in ("seed 3 from lenet:, overriding train.seed 0", "nesterov True from lenet:, overriding train.nesterov",
                  "eval_batch_size 64 from lenet:", "memory_format contiguous from lenet:", "compile True from lenet:",
                  "loss cross_entropy from lenet:"):
        assert shown in line, shown


@pytest.mark.parametrize("section", ["train", "lenet"])
@pytest.mark.parametrize("augment, error", [
    ({"foo": 1}, "unknown key '{}.augment.foo' (allowed: crop_padding, hflip"),
    ({"shift": 2}, "{}.augment.shift must be a finite number >= 0 and <= 0.5; got 2"),
    (5, "{}.augment must be a mapping of crop_padding")])
def test_an_augment_error_names_its_section(section, augment, error):
    params = load(REPO / "params.yaml")
    params[section]["augment"] = augment
    with pytest.raises(CnnlabError) as raised:
        validate(params)
    assert error.format(section) in str(raised.value)


@pytest.mark.parametrize("models, hint", [("mlp", "(a list even for one model: models: [mlp], or -S 'models=[mlp]')"),
                                          (["lenett"], "(did you mean lenet?)")])
def test_a_bad_models_list_lists_the_names_and_says_what_was_meant(models, hint):
    params = load(REPO / "params.yaml")
    params["models"] = models
    with pytest.raises(CnnlabError) as raised:
        validate(params)
    message = str(raised.value)
    assert message.startswith("params.yaml: models must be a non-empty list of distinct names from ")
    assert "lenet, mlp" in message
    assert message.endswith(hint), message
