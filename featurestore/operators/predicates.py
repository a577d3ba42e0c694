"""Predicates on one value, elementwise: ``is_nan``, ``is_not_nan``, ``is_finite``, ``is_infinite`` (null in,
null out; an integer is never NaN nor infinite) and ``is_null``, ``is_not_null`` (never null; NaN is a value,
not a null). Booleans travel as 1.0/0.0.

>>> import polars as pl
>>> from featurestore.expressions import parse, render
>>> render(parse(pl.col("close").is_nan() | pl.col("close").shift(1).is_null()))
'(is_nan(close) | is_null(shift(close, n=1)))'
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from featurestore.operators.base import BOOL, TIME, Operator, float_math, template

__all__ = ["OPERATORS"]


def _on_numbers(shown: str, kinds: tuple[str, ...], params: Mapping[str, Any]) -> str:
    float_math(shown, kinds, params)
    return BOOL


def _on_anything(shown: str, kinds: tuple[str, ...], params: Mapping[str, Any]) -> str:
    if kinds[0] == TIME:
        float_math(shown, kinds, params)  # names the problem
    return BOOL


def _predicate(name: str, typing, code: str) -> Operator:
    polars = "".join(part.title() for part in name.split("_"))
    return Operator(name, (f"Boolean.{polars}",), typing, code=template(code), write=lambda a: getattr(a, name)())


OPERATORS = (
    _predicate("is_nan", _on_numbers, "1.0 if math.isnan({a}) else 0.0, {valid}"),
    _predicate("is_not_nan", _on_numbers, "0.0 if math.isnan({a}) else 1.0, {valid}"),
    _predicate("is_finite", _on_numbers, "1.0 if math.isfinite({a}) else 0.0, {valid}"),
    _predicate("is_infinite", _on_numbers, "1.0 if math.isinf({a}) else 0.0, {valid}"),
    _predicate("is_null", _on_anything, "0.0 if {am} else 1.0, True"),
    _predicate("is_not_null", _on_anything, "1.0 if {am} else 0.0, True"),
)
