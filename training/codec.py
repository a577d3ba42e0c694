"""Typed JSON files: frozen dataclasses <-> JSON, by their type hints, with errors that name the field.

The model directory's ``meta.json`` (``training.artifact``), its reference distributions
(``training.reference``) and the monitoring reports (``serving.monitoring``, ``streaming.consistency``) are
each one dataclass written with ``encode`` and read back with ``decode``: a missing, unknown or ill-typed
field is refused with the error type the caller names, and the field's path (``onnx.input_dtype``,
``features[3].cdf``).

>>> from dataclasses import dataclass
>>> @dataclass(frozen=True)
... class Point:
...     x: float
...     label: str | None = None
>>> decode(Point, encode(Point(1.5)), "", error=ValueError, schema="point")
Point(x=1.5, label=None)
>>> decode(Point, {"x": "1", "label": None}, "", error=ValueError, schema="point")
Traceback (most recent call last):
...
ValueError: field 'x' must be a number, got '1'
>>> decode(Point, {"x": 1, "lable": None}, "", error=ValueError, schema="point")
Traceback (most recent call last):
...
ValueError: field 'lable' is not part of point; did you mean 'label'?
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
from collections.abc import Mapping
from datetime import datetime
from functools import cache
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import numpy as np

__all__ = ["decode", "encode"]


def encode(value: Any) -> Any:
    """``value`` as JSON-able data: dataclasses as objects, tuples as lists, times as ISO-8601, NaN and
    infinities as null."""
    if dataclasses.is_dataclass(value):
        return {f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): encode(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [encode(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


_KINDS = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}


def decode(tp: Any, value: Any, field: str, *, error: type[Exception], schema: str) -> Any:
    """``value`` (parsed JSON) as type ``tp``, or ``error`` naming ``field``; ``schema`` names the file's
    layout in the message about an unknown field."""
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return decode(inner, value, field, error=error, schema=schema)
    if value is None:
        raise error(f"field {field!r} is null, expected {_describe(tp)}")
    if origin is Literal:
        if value not in args:
            raise error(f"field {field!r} must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, list):
            raise error(f"field {field!r} must be a list, got {value!r}")
        return tuple(decode(args[0], item, f"{field}[{i}]", error=error, schema=schema) for i, item in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise error(f"field {field!r} must be an object, got {value!r}")
        return {key: decode(args[1], item, f"{field}.{key}", error=error, schema=schema) for key, item in value.items()}
    if dataclasses.is_dataclass(tp):
        return _decode_object(tp, value, field, error=error, schema=schema)
    if tp is datetime:
        try:
            moment = datetime.fromisoformat(value) if isinstance(value, str) else None
        except ValueError:
            moment = None
        if moment is None or moment.tzinfo is None:
            raise error(f"field {field!r} must be an ISO-8601 time with a UTC offset, got {value!r}")
        return moment
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
        return value
    raise error(f"field {field!r} must be {_describe(tp)}, got {value!r}")


def _describe(tp: Any) -> str:
    return _KINDS.get(tp, getattr(tp, "__name__", str(tp)))


def _decode_object(cls: type, value: Any, field: str, *, error: type[Exception], schema: str) -> Any:
    prefix = f"{field}." if field else ""
    if not isinstance(value, dict):
        raise error(f"field {field!r} must be an object ({cls.__name__}), got {value!r}")
    hints, names = _hints(cls), [f.name for f in dataclasses.fields(cls)]
    unknown = [key for key in value if key not in names]
    if unknown:
        close = difflib.get_close_matches(unknown[0], names, n=1)
        raise error(f"field '{prefix}{unknown[0]}' is not part of {schema}"
                    + (f"; did you mean '{prefix}{close[0]}'?" if close else f" (known: {', '.join(names)})"))
    missing = [name for name in names if name not in value]
    if missing:
        raise error(f"field '{prefix}{missing[0]}' is missing" + (
            f" (and {', '.join(prefix + m for m in missing[1:])})" if missing[1:] else ""))
    return cls(**{name: decode(hints[name], value[name], prefix + name, error=error, schema=schema) for name in names})
