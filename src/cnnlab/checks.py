"""Value checkers for params.yaml: each returns the cleaned value or raises ValueError("what is allowed").

Plain Python only (no torch), so every stage can validate its params in milliseconds. A model's own
options declare their checker in the constructor's signature, e.g.
`hidden: Annotated[int, integer(1, 65536)] = 256` (see cnnlab/models/mlp.py).
"""

from __future__ import annotations

import math
from typing import Any, Callable

Check = Callable[[Any], Any]


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _schema(check: Check, schema: dict) -> Check:
    """Attach the JSON Schema of what `check` accepts (tools/docs_tables.py writes params.schema.json)."""
    check.json_schema = schema
    return check


def integer(minimum: int | None = None, maximum: int | None = None, optional: bool = False) -> Check:
    def check(value):
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum) \
                or (maximum is not None and value > maximum):
            bounds = " and ".join(b for b in (f">= {minimum}" if minimum is not None else "",
                                              f"<= {maximum}" if maximum is not None else "") if b)
            raise ValueError("an integer" + (f" {bounds}" if bounds else "") + (" or null" if optional else ""))
        return value
    bounds = {k: v for k, v in (("minimum", minimum), ("maximum", maximum)) if v is not None}
    return _schema(check, {"type": ["integer", "null"] if optional else "integer", **bounds})


def number(low: float | None = None, high: float | None = None, low_open: bool = False,
           high_open: bool = False) -> Check:
    """A finite number within the bounds (inf and NaN are never allowed: a diverged run starts there)."""
    def check(value):
        ok = _is_number(value) and math.isfinite(value)
        if ok and low is not None:
            ok = value > low if low_open else value >= low
        if ok and high is not None:
            ok = value < high if high_open else value <= high
        if not ok:
            lo = "" if low is None else f"{'>' if low_open else '>='} {low}"
            hi = "" if high is None else f"{'<' if high_open else '<='} {high}"
            bounds = " and ".join(p for p in (lo, hi) if p)
            raise ValueError("a finite number" + (f" {bounds}" if bounds else ""))
        return float(value)
    bounds = {}
    if low is not None:
        bounds["exclusiveMinimum" if low_open else "minimum"] = low
    if high is not None:
        bounds["exclusiveMaximum" if high_open else "maximum"] = high
    return _schema(check, {"type": "number", **bounds})


def choice(*options: str) -> Check:
    def check(value):
        if not isinstance(value, str) or value not in options:
            raise ValueError("one of " + ", ".join(options))
        return value
    check.options = options
    return _schema(check, {"enum": list(options)})


def boolean(value):
    if not isinstance(value, bool):
        raise ValueError("true or false")
    return value


def text(value):
    if not isinstance(value, str):
        raise ValueError("a string")
    return value


def optional_text(value):
    if value is not None and not isinstance(value, str):
        raise ValueError("a path or null")
    return value


def weights_source(value):
    if value is not None and not isinstance(value, str):
        raise ValueError("a path to a state dict, imagenet or a torchvision weights name (IMAGENET1K_V1), or null")
    return value


_schema(boolean, {"type": "boolean"})
_schema(text, {"type": "string"})
_schema(optional_text, {"type": ["string", "null"]})
_schema(weights_source, {"type": ["string", "null"]})


def number_list(low: float, high: float) -> Check:
    def check(value):
        if not isinstance(value, list) or not value or not all(
                _is_number(v) and math.isfinite(v) and low <= v <= high for v in value):
            raise ValueError(f"a non-empty list of numbers from {low} to {high}")
        return [float(v) for v in value]
    return _schema(check, {"type": "array", "minItems": 1, "items": {"type": "number", "minimum": low, "maximum": high}})


def betas(value):
    """Adam's two moment decay rates, each in [0, 1)."""
    if not isinstance(value, list) or len(value) != 2 or not all(
            _is_number(v) and math.isfinite(v) and 0 <= v < 1 for v in value):
        raise ValueError("a list of two numbers in [0, 1), e.g. [0.9, 0.999]")
    return [float(v) for v in value]


_schema(betas, {"type": "array", "minItems": 2, "maxItems": 2,
                "items": {"type": "number", "minimum": 0, "exclusiveMaximum": 1}})


def class_fractions(value):
    """{class index: fraction of its training images to keep}, for the imbalance study."""
    if value is None:
        return {}
    if not isinstance(value, dict) or any(
            isinstance(k, bool) or not isinstance(k, int) or k < 0 or not _is_number(v) or not 0 < v <= 1
            for k, v in value.items()):
        raise ValueError("a mapping of class index to a fraction in (0, 1], e.g. {3: 0.1, 8: 0.1}")
    return {int(k): float(v) for k, v in value.items()}


_schema(class_fractions, {"type": ["object", "null"], "propertyNames": {"pattern": "^[0-9]+$"},
                          "additionalProperties": {"type": "number", "exclusiveMinimum": 0, "maximum": 1}})


def names(allowed) -> Check:
    """A non-empty list of distinct names, each one of `allowed`."""
    def check(value):
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value) \
                or len(set(value)) != len(value) or any(v not in allowed for v in value):
            raise ValueError("a non-empty list of distinct names from " + ", ".join(allowed))
        return value
    return _schema(check, {"type": "array", "minItems": 1, "uniqueItems": True, "items": {"enum": list(allowed)}})
