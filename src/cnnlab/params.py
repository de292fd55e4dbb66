"""Load and validate params.yaml, the single source of truth for every stage.

Every key is checked on load: an unknown key, a wrong type or an out-of-range value stops the stage
with one line naming the key and what is allowed. A model's own section (e.g. `lenet:`) may override
any shared `train:` default and set the model constructor's keyword arguments.
"""

from __future__ import annotations

import inspect
import re
import typing
from pathlib import Path
from typing import Any, Callable

import yaml

from cnnlab import CnnlabError
from cnnlab.datasets import DATASETS
from cnnlab.models import MODELS


class _Yaml12Loader(yaml.SafeLoader):
    """PyYAML follows YAML 1.1, where `1e-3` is a string; DVC (`-S train.lr=1e-3`) writes YAML 1.2."""


_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


# --- value checkers: each returns the cleaned value or raises ValueError("what is allowed") ---

def _integer(minimum: int | None = None, optional: bool = False) -> Callable[[Any], Any]:
    def check(value):
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
            bound = f" >= {minimum}" if minimum is not None else ""
            raise ValueError(f"an integer{bound}" + (" or null" if optional else ""))
        return value
    return check


def _number(low: float | None = None, high: float | None = None, low_open: bool = False,
            high_open: bool = False) -> Callable[[Any], Any]:
    def check(value):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok and low is not None:
            ok = value > low if low_open else value >= low
        if ok and high is not None:
            ok = value < high if high_open else value <= high
        if not ok:
            lo = "" if low is None else f"{'>' if low_open else '>='} {low}"
            hi = "" if high is None else f"{'<' if high_open else '<='} {high}"
            raise ValueError("a number" + (" " if lo or hi else "") + " and ".join(p for p in (lo, hi) if p))
        return float(value)
    return check


def _choice(*options: str) -> Callable[[Any], Any]:
    def check(value):
        if value not in options:
            raise ValueError("one of " + ", ".join(options))
        return value
    return check


def _boolean(value):
    if not isinstance(value, bool):
        raise ValueError("true or false")
    return value


def _text(value):
    if not isinstance(value, str):
        raise ValueError("a string")
    return value


def _number_list(low: float, high: float) -> Callable[[Any], Any]:
    def check(value):
        if not isinstance(value, list) or not value or any(
                isinstance(v, bool) or not isinstance(v, (int, float)) or not low <= v <= high for v in value):
            raise ValueError(f"a non-empty list of numbers from {low} to {high}")
        return [float(v) for v in value]
    return check


def _class_fractions(value):
    """{class index: fraction of its training images to keep}, for the imbalance study."""
    if value is None:
        return {}
    if not isinstance(value, dict) or any(
            isinstance(k, bool) or not isinstance(k, int) or k < 0 or isinstance(v, bool)
            or not isinstance(v, (int, float)) or not 0 < v <= 1 for k, v in value.items()):
        raise ValueError("a mapping of class index to a fraction in (0, 1], e.g. {3: 0.1, 8: 0.1}")
    return {int(k): float(v) for k, v in value.items()}


def _optional_text(value):
    if value is not None and not isinstance(value, str):
        raise ValueError("a path or null")
    return value


AUGMENT_CHECKS: dict[str, Callable[[Any], Any]] = {
    "crop_padding": _integer(0),
    "hflip": _boolean,
    "shift": _number(0, 0.5),
    "scale": _number(0, 0.5),
    "noise": _number(0, 1, high_open=True),
}
AUGMENT_OFF = {"crop_padding": 0, "hflip": False, "shift": 0.0, "scale": 0.0, "noise": 0.0}


def _augment(value):
    """Batch-level training augmentation; keys left out are off."""
    if value is None:
        return dict(AUGMENT_OFF)
    return {**AUGMENT_OFF, **_check_section("augment", value, AUGMENT_CHECKS, required=False)}


def _model_list(value):
    if not isinstance(value, list) or not value or len(set(value)) != len(value) \
            or any(v not in MODELS for v in value):
        raise ValueError("a non-empty list of distinct names from " + ", ".join(MODELS))
    return value


OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("none", "step", "cosine", "onecycle")
DEVICES = ("auto", "cpu", "cuda", "mps")
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")

SCHEMA: dict[str, dict[str, Callable[[Any], Any]]] = {
    "data": {
        "dataset": _choice(*DATASETS),
        "verify_checksums": _boolean,
        "path": _optional_text,
        "image_size": _integer(8),
    },
    "prepare": {
        "train_size": _integer(1, optional=True),
        "test_size": _integer(1, optional=True),
        "samples_per_class": _integer(1, optional=True),
        "val_fraction": _number(0, 1, low_open=True, high_open=True),
        "val_size": _integer(1, optional=True),
        "class_fraction": _class_fractions,
        "seed": _integer(0),
    },
    "train": {
        "epochs": _integer(1),
        "batch_size": _integer(1),
        "optimizer": _choice(*OPTIMIZERS),
        "lr": _number(0, low_open=True),
        "weight_decay": _number(0),
        "momentum": _number(0, 1, high_open=True),
        "nesterov": _boolean,
        "scheduler": _choice(*SCHEDULERS),
        "step_size": _integer(1),
        "gamma": _number(0, 1, low_open=True),
        "label_smoothing": _number(0, 1, high_open=True),
        "augment": _augment,
        "patience": _integer(0),
        "seed": _integer(0),
        "device": _choice(*DEVICES),
        "memory_format": _choice(*MEMORY_FORMATS),
        "precision": _choice(*PRECISIONS),
        "compile": _boolean,
        "eval_batch_size": _integer(1),
        "weights": _optional_text,
        "progress": _boolean,
    },
    "evaluate": {
        "batch_size": _integer(1),
    },
    "analyze": {
        "samples_per_class": _integer(1),
        "max_channels": _integer(1),
        "tsne_samples": _integer(10),
        "tsne_perplexity": _number(1),
        "noise_levels": _number_list(0, 1),
        "top_confused": _integer(0),
        "batch_size": _integer(1),
        "seed": _integer(0),
        "dpi": _integer(30),
    },
    "report": {
        "title": _text,
        "dpi": _integer(30),
    },
}
TOP_LEVEL = ("data", "prepare", "models", "train", "evaluate", "analyze", "report", *MODELS)


def _fail(key: str, got: Any, allowed: str) -> CnnlabError:
    return CnnlabError(f"params.yaml: {key} must be {allowed}; got {got!r}")


def _check_section(name: str, section: Any, checks: dict[str, Callable[[Any], Any]],
                   required: bool = True) -> dict:
    if not isinstance(section, dict):
        raise _fail(name, section, "a mapping of " + ", ".join(checks))
    unknown = sorted(set(section) - set(checks))
    if unknown:
        raise CnnlabError(f"params.yaml: unknown key '{name}.{unknown[0]}' (allowed: {', '.join(checks)})")
    missing = [k for k in checks if k not in section]
    if required and missing:
        raise CnnlabError(f"params.yaml: missing key '{name}.{missing[0]}'")
    cleaned = {}
    for key, value in section.items():
        try:
            cleaned[key] = checks[key](value)
        except ValueError as allowed:
            raise _fail(f"{name}.{key}", value, str(allowed)) from None
    return cleaned


def model_kwargs_checks(model: str) -> dict[str, Callable[[Any], Any]]:
    """The constructor's own keyword arguments, checked by the type of their default value."""
    checks = {}
    hints = typing.get_type_hints(MODELS[model])
    for arg in inspect.signature(MODELS[model]).parameters.values():
        if arg.kind is not arg.KEYWORD_ONLY:
            continue  # positional args (channels, classes, image size) come from the data
        default = arg.default
        if typing.get_origin(hints.get(arg.name)) is typing.Literal:
            checks[arg.name] = _choice(*typing.get_args(hints[arg.name]))
        elif isinstance(default, bool):
            checks[arg.name] = _boolean
        elif isinstance(default, int):
            checks[arg.name] = _integer(1)
        elif isinstance(default, float):
            checks[arg.name] = _number(0, 1, high_open=True) if "dropout" in arg.name else _number()
        else:
            checks[arg.name] = _text
    return checks


def validate(raw: Any) -> dict:
    """Return a cleaned copy of the params, or raise CnnlabError naming the first bad key."""
    if not isinstance(raw, dict):
        raise CnnlabError("params.yaml: expected a mapping at the top level")
    unknown = sorted(set(raw) - set(TOP_LEVEL))
    if unknown:
        raise CnnlabError(f"params.yaml: unknown key '{unknown[0]}' "
                          f"(allowed: {', '.join(TOP_LEVEL[:7])} and a section per model: {', '.join(MODELS)})")
    for key in ("data", "prepare", "models", "train", "evaluate", "analyze", "report"):
        if key not in raw:
            raise CnnlabError(f"params.yaml: missing key '{key}'")
    params = {name: _check_section(name, raw[name], checks) for name, checks in SCHEMA.items()}
    try:
        params["models"] = _model_list(raw["models"])
    except ValueError as allowed:
        raise _fail("models", raw["models"], str(allowed)) from None
    for model in MODELS:
        checks = {**SCHEMA["train"], **model_kwargs_checks(model)}
        params[model] = _check_section(model, raw.get(model) or {}, checks, required=False)
    prep = params["prepare"]
    if prep["train_size"] is not None and prep["samples_per_class"] is not None:
        raise CnnlabError("params.yaml: set at most one of prepare.train_size and prepare.samples_per_class")
    return params


def load(path: str | Path = "params.yaml") -> dict:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise CnnlabError(f"{path}: not found (run from the project root)") from None
    try:
        raw = yaml.load(text, Loader=_Yaml12Loader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise CnnlabError(f"{path}: not valid YAML{where}") from None
    return validate(raw)


def train_config(params: dict, model: str) -> dict:
    """The shared `train:` defaults with the model's own overrides applied."""
    own = params.get(model, {})
    return {**params["train"], **{k: v for k, v in own.items() if k in SCHEMA["train"]}}


def model_kwargs(params: dict, model: str) -> dict:
    own = params.get(model, {})
    return {k: v for k, v in own.items() if k not in SCHEMA["train"]}
