"""Load and validate params.yaml, the single source of truth for every stage.

The whole file is checked on load: an unknown key, a wrong type or an out-of-range value stops the
stage with one line naming the key and what is allowed. A model's own section (e.g. `lenet:`) may
override any shared `train:` default and set the model constructor's keyword arguments.

A stage sees only the params its dvc.yaml entry declares (`for_stage`): reading any other key
fails at once, so the `params:` lists in dvc.yaml cannot silently fall behind the code.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

from ruamel.yaml import YAML
from ruamel.yaml.constructor import DuplicateKeyError
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from cnnlab import CnnlabError, checks, losses, models

AUGMENT_CHECKS: dict[str, Callable[[Any], Any]] = {
    "crop_padding": checks.integer(0, 64),
    "hflip": checks.boolean,
    "shift": checks.number(0, 0.5),
    "scale": checks.number(0, 0.5),
    "noise": checks.number(0, 1, high_open=True),
}
AUGMENT_OFF = {"crop_padding": 0, "hflip": False, "shift": 0.0, "scale": 0.0, "noise": 0.0}


def _augment(value, name: str):
    """Batch-level training augmentation (the section `name`: train.augment, lenet.augment); keys left
    out are off."""
    if value is None:
        return dict(AUGMENT_OFF)
    return {**AUGMENT_OFF, **_check_section(name, value, AUGMENT_CHECKS, required=False)}


_augment.nested = True  # checked as a section of its own, named by _check_section


_augment.allowed = "a mapping of " + ", ".join(AUGMENT_CHECKS) + " (each optional: left out is off)"
_augment.json_schema = {"type": ["object", "null"], "additionalProperties": False,
                        "properties": {key: check.json_schema for key, check in AUGMENT_CHECKS.items()}}


OPTIMIZERS = ("adam", "adamw", "sgd")
WATCH_METHODS = ("integrated_gradients", "input_gradients", "occlusion", "gradcam", "guided_gradcam")
SCHEDULERS = ("none", "step", "cosine", "onecycle")
DEVICES = ("auto", "cpu", "cuda", "mps")
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
TTA = ("none", "flip", "flip_translate")
MAX_BATCH = 1 << 16

SCHEMA: dict[str, dict[str, Callable[[Any], Any]]] = {
    "data": {
        "dataset": checks.text,  # one of the catalogue's, checked by the stages that read it (require_choice)
        "verify_checksums": checks.boolean,
        "path": checks.optional_text,
        "image_size": checks.integer(8, 1024),
        "max_device_bytes": checks.integer(0, optional=True),
    },
    "prepare": {
        "train_size": checks.integer(1, optional=True),
        "test_size": checks.integer(1, optional=True),
        "samples_per_class": checks.integer(1, optional=True),
        "val_fraction": checks.number(0, 1, low_open=True, high_open=True),
        "val_size": checks.integer(1, optional=True),
        "test_fraction": checks.number(0, 1, low_open=True, high_open=True),
        "class_fraction": checks.class_fractions,
        "seed": checks.integer(0),
    },
    "train": {
        "epochs": checks.integer(1, 10000),
        "batch_size": checks.integer(1, MAX_BATCH),
        "optimizer": checks.choice(*OPTIMIZERS),
        "lr": checks.number(0, 10, low_open=True),
        "weight_decay": checks.number(0, 10),
        "betas": checks.betas,
        "momentum": checks.number(0, 1, high_open=True),
        "nesterov": checks.boolean,
        "scheduler": checks.choice(*SCHEDULERS),
        "step_size": checks.integer(1),
        "gamma": checks.number(0, 1, low_open=True),
        "loss": checks.choice(*losses.names()),
        "label_smoothing": checks.number(0, 1, high_open=True),
        "tta": checks.choice(*TTA),
        "augment": _augment,
        "patience": checks.integer(0),
        "seed": checks.integer(0),
        "device": checks.choice(*DEVICES),
        "memory_format": checks.choice(*MEMORY_FORMATS),
        "precision": checks.choice(*PRECISIONS),
        "compile": checks.boolean,
        "eval_batch_size": checks.integer(1, MAX_BATCH),
        "weights": checks.weights_source,
        "freeze": checks.boolean,
        "progress": checks.boolean,
        "resume": checks.boolean,
        "nproc": checks.integer(1, 1024),
        "sync_batchnorm": checks.boolean,
        "watch": checks.boolean,
        "watch_method": checks.choice(*WATCH_METHODS),
    },
    "evaluate": {
        "batch_size": checks.integer(1, MAX_BATCH),
    },
    "analyze": {
        "samples_per_class": checks.integer(1, 20),
        "max_channels": checks.integer(1, 64),
        "tsne_samples": checks.integer(10, 20000),
        "tsne_perplexity": checks.number(1, 100),
        "tsne_iterations": checks.integer(250, 10000),
        "noise_levels": checks.number_list(0, 1),
        "top_confused": checks.integer(0, 100),
        "explain_samples": checks.integer(2, 2000),
        "batch_size": checks.integer(1, MAX_BATCH),
        "seed": checks.integer(0),
        "dpi": checks.integer(30, 300),
    },
    "report": {
        "title": checks.text,
        "dpi": checks.integer(30, 300),
    },
}
SECTIONS = ("data", "prepare", "models", "train", "evaluate", "analyze", "report")


def _fail(key: str, got: Any, allowed: str) -> CnnlabError:
    return CnnlabError(f"params.yaml: {key} must be {allowed}; got {got!r}")


def _check_section(name: str, section: Any, section_checks: dict[str, Callable[[Any], Any]],
                   required: bool = True) -> dict:
    if not isinstance(section, dict):
        raise _fail(name, section, "a mapping of " + ", ".join(section_checks))
    unknown = sorted(str(k) for k in set(section) - set(section_checks))
    if unknown:
        raise CnnlabError(f"params.yaml: unknown key '{name}.{unknown[0]}' (allowed: {', '.join(section_checks)})")
    missing = [k for k in section_checks if k not in section]
    if required and missing:
        raise CnnlabError(f"params.yaml: missing key '{name}.{missing[0]}'")
    cleaned = {}
    for key, value in section.items():
        try:
            check = section_checks[key]
            cleaned[key] = check(value, f"{name}.{key}") if getattr(check, "nested", False) else check(value)
        except ValueError as allowed:
            raise _fail(f"{name}.{key}", value, str(allowed)) from None
    return cleaned


def _models_hint(got: Any, zoo: list[str]) -> str:
    """What to write instead of a bad models list: a list for one name, the nearest name for a typo."""
    import difflib
    if isinstance(got, str):
        return f" (a list even for one model: models: [{got}], or -S 'models=[{got}]')"
    near = [difflib.get_close_matches(str(name), zoo, n=1) for name in got or [] if name not in zoo] \
        if isinstance(got, list) else []
    return f" (did you mean {near[0][0]}?)" if near and near[0] else ""


def validate(raw: Any, built: tuple[str, ...] | None = None) -> dict:
    """Return a cleaned copy of the params, or raise CnnlabError naming the first bad key.

    A model's own options (its constructor's keywords) are checked for the models in `built` (None:
    every model), which imports their modules; for the others only the shared `train:` keys of
    their sections are checked and the rest is kept for the stages that build them. So a stage
    that builds no model imports no model code, and an edit to one model reruns only its stages."""
    if not isinstance(raw, dict):
        raise CnnlabError("params.yaml: expected a mapping at the top level")
    zoo = models.names()
    unknown = sorted(str(k) for k in set(raw) - set(SECTIONS) - set(zoo))
    if unknown:
        raise CnnlabError(f"params.yaml: unknown key '{unknown[0]}' "
                          f"(allowed: {', '.join(SECTIONS)} and a section per model: {', '.join(zoo)})")
    for key in SECTIONS:
        if key not in raw:
            raise CnnlabError(f"params.yaml: missing key '{key}'")
    params = {name: _check_section(name, raw[name], section_checks) for name, section_checks in SCHEMA.items()}
    try:
        params["models"] = checks.names(zoo)(raw["models"])
    except ValueError as allowed:
        hint = _models_hint(raw["models"], zoo)
        raise CnnlabError(str(_fail("models", raw["models"], str(allowed))) + hint) from None
    for model in zoo:
        section = raw.get(model)
        section = {} if section is None else section  # `lenet:` with nothing after it
        if built is None or model in built:
            params[model] = _check_section(model, section, {**SCHEMA["train"], **models.options(model)},
                                           required=False)
        elif not isinstance(section, dict):
            raise _fail(model, section, "a mapping of train: overrides and the model's options")
        else:  # the shared keys now; the model's own options when a stage builds it
            shared = _check_section(model, {k: v for k, v in section.items() if k in SCHEMA["train"]},
                                    SCHEMA["train"], required=False)
            params[model] = {**section, **shared}
    prep = params["prepare"]
    if prep["train_size"] is not None and prep["samples_per_class"] is not None:
        raise CnnlabError("params.yaml: set at most one of prepare.train_size and prepare.samples_per_class")
    return params


def read_yaml(text: str) -> Any:
    """YAML 1.2, as DVC reads and writes params.yaml (`-S train.lr=1e-3` is a number, not a
    string), with duplicate keys refused as DVC refuses them."""
    return YAML(typ="safe").load(text)  # with ruamel.yaml.clib: the C parser, as DVC parses it


def require_choice(key: str, value: Any, allowed) -> Any:
    """A params value checked against a list only the stage that uses it holds (data.dataset against
    the dataset catalogue, read by download and prepare alone: adding a dataset reruns no training)."""
    try:
        return checks.choice(*allowed)(value)
    except ValueError as reason:
        raise _fail(key, value, str(reason)) from None


def load(path: str | Path = "params.yaml", built: tuple[str, ...] | None = None) -> dict:
    """The whole file, validated (the options of the models in `built`; None: of every model)."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise CnnlabError(f"{path}: not found (run from the project root)") from None
    try:
        raw = read_yaml(text)
    except YAMLError as err:
        mark = err.problem_mark if isinstance(err, MarkedYAMLError) else None
        where = f" at line {mark.line + 1}" if mark else ""
        problem = err.problem if isinstance(err, MarkedYAMLError) else None
        if isinstance(err, DuplicateKeyError):  # 'found duplicate key "x" with value ...'
            problem = f"duplicate key '{problem.split(chr(34))[1]}': keep one"
        raise CnnlabError(f"{path}: not valid YAML{where}" + (f" ({problem})" if problem else "")) from None
    return validate(raw, built)


class StageParams(dict):
    """The params a stage declared in dvc.yaml; reading anything else names the missing declaration."""

    def __init__(self, values: dict, stage: str, prefix: str = ""):
        super().__init__(values)
        self.stage, self.prefix = stage, prefix

    def __getitem__(self, key):
        if key not in self:
            raise CnnlabError(f"dvc.yaml: stage '{self.stage}' reads params '{self.prefix}{key}' "
                              f"but does not declare it under params:")
        value = super().__getitem__(key)
        return StageParams(value, self.stage, f"{self.prefix}{key}.") if isinstance(value, dict) \
            and not isinstance(value, StageParams) else value


def declared(stage: str, item: str | None = None, dvc_yaml: str | Path = "dvc.yaml") -> list[str]:
    """The params keys dvc.yaml declares for `stage`, with `${item.model}` filled in from `item`."""
    try:
        stages = read_yaml(Path(dvc_yaml).read_text())["stages"]
        entries = stages[stage].get("params", [])
    except (OSError, KeyError, TypeError, YAMLError):
        raise CnnlabError(f"{dvc_yaml}: no stage '{stage}' (run from the project root)") from None
    keys = []
    for entry in entries:
        if isinstance(entry, dict):  # `- params.yaml:` (the whole file) or `- params.yaml: [keys]`
            for keys_in_file in entry.values():
                keys += keys_in_file or list(SECTIONS) + list(models.names())
        else:
            keys.append(entry.replace("${item.model}", item or ""))
    return keys


def _select(params: dict, keys: list[str]) -> dict:
    chosen: dict = {}
    for key in keys:
        source, target, parts = params, chosen, key.split(".")
        for part in parts[:-1]:
            source = source[part]
            target = target.setdefault(part, {})
        target[parts[-1]] = source[parts[-1]]
    return chosen


def for_stage(stage: str, item: str | None = None, path: str | Path = "params.yaml") -> StageParams:
    """Validate the whole file (the options of model `item` only); return only what dvc.yaml
    declares for `stage` (of model `item`)."""
    loaded = load(path, built=(item,) if item else ())
    return StageParams(_select(loaded, declared(stage, item, Path(path).with_name("dvc.yaml"))), stage)


def train_config(params: dict, model: str) -> dict:
    """The shared `train:` defaults with the model's own overrides applied."""
    own = params[model]
    return {**params["train"], **{k: v for k, v in own.items() if k in SCHEMA["train"]}}


def model_kwargs(params: dict, model: str) -> dict:
    own = params[model]
    return {k: v for k, v in own.items() if k not in SCHEMA["train"]}


# the training settings a user tunes, in the order the recipe line names them; the last ones only
# when set (their defaults go without saying)
RECIPE_KEYS = ("epochs", "batch_size", "optimizer", "lr", "weight_decay", "betas", "momentum", "nesterov", "scheduler",
               "step_size", "gamma", "loss", "label_smoothing", "patience", "augment", "tta", "weights", "freeze",
               "seed", "device", "precision", "memory_format", "compile", "nproc", "eval_batch_size")
UNSAID = {"betas": [0.9, 0.999], "nesterov": False, "loss": "cross_entropy", "augment": None, "tta": "none",
          "weights": None, "freeze": False, "seed": 0, "device": "auto", "precision": "auto", "memory_format": "auto",
          "compile": False, "nproc": 1, "eval_batch_size": 256}
USED_ONLY_WITH = {"momentum": ("optimizer", "sgd"), "nesterov": ("optimizer", "sgd"),  # Adam's are betas
                  "step_size": ("scheduler", "step"), "gamma": ("scheduler", "step")}


def _shown(key: str, value: Any) -> str:
    if key == "augment":
        return ",".join(f"{k}={v}" for k, v in value.items() if v) or "off"
    return str(value)


def describe_recipe(params: dict, model: str) -> str:
    """One line: the network options its section sets, then the effective training recipe of `model`
    and where each value comes from. A model's own section wins over `train:`; its values are marked,
    with the `train:` value they override (the design card's `-S train.epochs=1` does nothing for a
    model whose section sets epochs)."""
    cfg, own, shared = train_config(params, model), params[model], params["train"]
    parts = []
    for key in RECIPE_KEYS:
        value = cfg[key]
        if key in UNSAID and key not in own and _shown(key, value) in (str(UNSAID[key]), "off"):
            continue
        if key in USED_ONLY_WITH and cfg[USED_ONLY_WITH[key][0]] != USED_ONLY_WITH[key][1]:
            continue
        if key == "betas" and cfg["optimizer"] == "sgd":
            continue
        part = f"{key} {_shown(key, value)}"
        if key in own:
            part += f" from {model}:" + (f", overriding train.{key} {_shown(key, shared[key])}"
                                         if own[key] != shared[key] else "")
        parts.append(part)
    network = ", ".join(f"{key} {value}" for key, value in model_kwargs(params, model).items())
    return f"{model}{f' ({network})' if network else ''}: " + "; ".join(parts)


def model_argument(stage: str) -> str:
    """The model named on a per-model stage's command line (`python stages/train.py lenet`)."""
    if len(sys.argv) != 2 or sys.argv[1] not in models.names():
        raise CnnlabError(f"usage: {stage}.py MODEL, MODEL one of {', '.join(models.names())}")
    return sys.argv[1]
