"""The leaves of a feature expression, and casts: ``pl.col``, ``pl.lit``, ``.cast``.

``col`` reads one bar column of the current bar: ``open``, ``high``, ``low``, ``close``, ``volume`` (Float64)
or the timestamps ``ts`` (the bar's open time) and ``close_ts`` (``ts`` + the timeframe), usable through
``dt.*`` only. ``lit`` is a number, a boolean or null; polars writes NaN and infinite float literals as JSON
null, so they cannot be read back and are refused, as are integers beyond 2**53 (not exact as a float64).

``cast`` converts to Float64 or Float32 only: both are exact in the engine (a float64 holding the nearest
float32). Integer casts truncate toward zero and fail (strict) or give null (``strict=False``) on NaN, inf and
out-of-range values, Boolean casts turn NaN into True: refused, with the spelling that says what is meant.

>>> import polars as pl
>>> from featurestore.expressions import parse
>>> parse(pl.col("close").cast(pl.Float32)).params
(('dtype', 'Float32'), ('strict', True))
>>> parse(pl.col("close").cast(pl.Int64))
Traceback (most recent call last):
...
featurestore.errors.UnsupportedExpressionError: unsupported cast to Int64: integer casts truncate toward zero and fail or give null on NaN, inf and out-of-range values; use .floor() or .ceil() for whole numbers, or compare (x > 0) for a flag
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from typing import Any

import polars as pl

from featurestore.errors import SchemaError, UnsupportedExpressionError
from featurestore.operators.base import BOOL, FLOAT, FLOAT32, INT, NULL, TIME, Emit, Operator

__all__ = ["OPERATORS", "SOURCE_COLUMNS", "TIME_COLUMNS", "VALUE_COLUMNS", "check_column"]

VALUE_COLUMNS = ("open", "high", "low", "close", "volume")
TIME_COLUMNS = ("ts", "close_ts")
SOURCE_COLUMNS = (*TIME_COLUMNS, *VALUE_COLUMNS)
_EXACT_INT = 2**53
_CASTS = {"Float64": FLOAT, "Float32": FLOAT32}


def check_column(name: Any) -> str:
    """``name`` if it is a bar column, else a ``SchemaError`` with a "did you mean"."""
    if name not in SOURCE_COLUMNS:
        close = difflib.get_close_matches(str(name), SOURCE_COLUMNS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise SchemaError(f"unknown column {name!r}: a feature reads the bar columns {SOURCE_COLUMNS}{hint}")
    return name


def _col_parse(name: Any) -> dict[str, Any]:
    return {"name": check_column(name)}


def _col_kind(shown: str, kinds: tuple[str, ...], params: Mapping[str, Any]) -> str:
    return TIME if params["name"] in TIME_COLUMNS else FLOAT


def _col_code(emit: Emit) -> list[str]:
    # the generated program's arguments are named after the bar columns
    name = emit.params["name"]
    source = f"ts + {float(emit.step_ms)!r}" if name == "close_ts" else name
    return [f"{emit.value}, {emit.valid} = {source}, True"]


def literal_value(body: Any) -> Any:
    """The Python value of a serialized polars literal (``{"Dyn": {"Float": 2.5}}``...), or a refusal."""
    (kind, payload), = body.items()
    if kind == "Dyn":
        (dtype, value), = payload.items()
        if dtype not in ("Int", "Float"):
            raise UnsupportedExpressionError(f"unsupported operation {dtype.lower()} literal {value!r} "
                                             f"in a feature expression")
    elif kind == "Scalar":
        (dtype, value), = payload.items()
        if dtype == "Null":
            return None
        if dtype == "String":
            raise UnsupportedExpressionError(f"unsupported operation string literal {value!r} in a feature expression")
        if dtype == "Float32":
            raise UnsupportedExpressionError(
                f"a Float32 literal ({value!r}) is not supported: write the number as a Float64 literal, "
                f"or cast it: pl.lit({value!r}).cast(pl.Float32)")
        if dtype != "Float64" and dtype != "Boolean" and not dtype.startswith(("Int", "UInt")):
            raise UnsupportedExpressionError(f"unsupported operation literal of type {dtype} in a feature expression")
    else:
        raise UnsupportedExpressionError(f"unsupported operation {kind.lower()} literal in a feature expression")
    return checked_value(value)


def checked_value(value: Any) -> Any:
    """``value`` if a float64 holds it exactly, else a refusal."""
    if value is None:
        # polars writes NaN and +/-inf float literals as JSON null: they cannot be recovered exactly.
        raise UnsupportedExpressionError(
            "a NaN or infinite literal cannot be represented in a feature definition; "
            "use a finite value or when/then/otherwise on is_nan()/is_finite()")
    if not isinstance(value, (int, float)):
        raise UnsupportedExpressionError(f"unsupported operation literal {value!r} in a feature expression")
    if isinstance(value, float) and not math.isfinite(value):
        raise UnsupportedExpressionError(
            f"a NaN or infinite constant ({value!r}) cannot be represented in a feature definition; "
            "use a finite value or when/then/otherwise on is_nan()/is_finite()")
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > _EXACT_INT:
        raise UnsupportedExpressionError(
            f"the integer literal {value} is not exact as a float64 (|n| > 2**53); write it as a float")
    return value


def _lit_parse(body: Any) -> dict[str, Any]:
    return {"value": literal_value(body)}


def _lit_kind(shown: str, kinds: tuple[str, ...], params: Mapping[str, Any]) -> str:
    value = params["value"]
    return NULL if value is None else BOOL if isinstance(value, bool) else INT if isinstance(value, int) else FLOAT


def _lit_code(emit: Emit) -> list[str]:
    value = emit.params["value"]
    return [f"{emit.value}, {emit.valid} = {float_source(0.0 if value is None else value)}, {value is not None}"]


def float_source(value: Any) -> str:
    """Python source of ``float(value)``, NaN and infinities included (a constant may evaluate to them)."""
    number = float(value)
    return repr(number) if math.isfinite(number) else f"float({str(number)!r})"


_CAST_FIX = {
    "Int": "integer casts truncate toward zero and fail or give null on NaN, inf and out-of-range values; "
           "use .floor() or .ceil() for whole numbers, or compare (x > 0) for a flag",
    "Boolean": "a cast to Boolean makes every non-zero value (NaN included) True; compare instead, e.g. (x != 0)",
}


def _cast_parse(options: Mapping[str, Any]) -> dict[str, Any]:
    dtype = options["dtype"]
    name = dtype.get("Literal") if isinstance(dtype, dict) else None
    if isinstance(name, dict):  # parametrised types: Datetime(...), Decimal(...), List(...)
        (name, _), = name.items()
    if name not in _CASTS:
        what = str(name) if isinstance(name, str) else str(dtype)
        fix = _CAST_FIX["Int" if what.startswith(("Int", "UInt")) else "Boolean"] if what.startswith(
            ("Int", "UInt", "Boolean")) else "the streaming engine computes float64 values; cast to pl.Float64"
        raise UnsupportedExpressionError(f"unsupported cast to {what}: {fix}")
    return {"dtype": name, "strict": options["options"] == "Strict"}


def _cast_kind(shown: str, kinds: tuple[str, ...], params: Mapping[str, Any]) -> str:
    if kinds[0] == TIME:
        raise UnsupportedExpressionError(f"{shown} of a timestamp: use ts and close_ts through dt.* only")
    return _CASTS[params["dtype"]]


def _cast_code(emit: Emit) -> list[str]:
    a = emit.args[0]
    value = a.value if emit.params["dtype"] == "Float64" else f"float(np.float32({a.value}))"
    return [f"{emit.value}, {emit.valid} = {value}, {a.valid}"]


OPERATORS = (
    Operator("col", ("Column",), _col_kind, params=("name",), arguments=0, parse=_col_parse, code=_col_code,
             render="{name}", write=lambda name: pl.col(name)),
    Operator("lit", ("Literal",), _lit_kind, params=("value",), arguments=0, parse=_lit_parse, code=_lit_code,
             render="{value!r}", write=lambda value: pl.lit(value)),
    Operator("cast", ("Cast",), _cast_kind, params=("dtype", "strict"), parse=_cast_parse, code=_cast_code,
             write=lambda x, dtype, strict: x.cast(getattr(pl, dtype), strict=strict)),
)
