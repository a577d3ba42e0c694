"""Choosing among values, elementwise: ``when/then/otherwise``, ``fill_null``, ``clip``, ``max_horizontal``,
``min_horizontal``. Values pass through unchanged, so integers and booleans stay exact.

- ``pl.when(p).then(t).otherwise(f)``: ``t`` where ``p`` is true, else ``f`` (a null ``p`` counts as false;
  ``p`` must be a boolean). Chains of ``.when`` nest.
- ``x.fill_null(v)``: ``v`` where ``x`` is null (NaN is a value, not a null).
- ``x.clip(lo, hi)``: ``lo`` where ``x < lo``, else ``hi`` where ``x > hi``, else ``x`` (so ``lo`` wins when
  ``lo > hi``); NaN stays NaN and a null bound is no bound.
- ``pl.max_horizontal(...)``/``pl.min_horizontal(...)``: the largest/smallest non-null, non-NaN value (NaN only
  if every value is NaN, null if every value is null).

>>> horizontal_max(float("nan"), True, 1.0, True), horizontal_max(0.0, False, 2.0, True)
((1.0, True), (2.0, True))
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import polars as pl

from featurestore.errors import UnsupportedExpressionError
from featurestore.operators.base import (
    BOOL,
    FLOAT,
    INT,
    NULL,
    Emit,
    Operator,
    kernel,
    require,
    selecting,
    template,
)

__all__ = ["OPERATORS", "horizontal_max", "horizontal_min"]


@kernel
def horizontal_max(a, av, b, bv):
    if not av or not bv:
        return (a, av) if av else (b, bv)
    if math.isnan(a) or math.isnan(b):
        return (b if math.isnan(a) else a), True
    return (a if a > b else b), True


@kernel
def horizontal_min(a, av, b, bv):
    if not av or not bv:
        return (a, av) if av else (b, bv)
    if math.isnan(a) or math.isnan(b):
        return (b if math.isnan(a) else a), True
    return (a if a < b else b), True


def _when_kind(shown: str, kinds: tuple[str, ...], params: Mapping[str, Any]) -> str:
    if kinds[0] != BOOL:
        raise UnsupportedExpressionError(
            f"when(...) needs a boolean condition, got {'null' if kinds[0] == NULL else kinds[0]}: "
            f"compare, e.g. pl.when(x > 0)")
    return selecting(shown, kinds[1:], params)


def _clip_parse(options: Mapping[str, Any]) -> dict[str, Any]:
    return {"has_min": options["has_min"], "has_max": options["has_max"]}


def _clip_kind(shown: str, kinds: tuple[str, ...], params: Mapping[str, Any]) -> str:
    require(shown, kinds[:1], {FLOAT})  # polars casts the bounds to the value's type
    require(shown, kinds[1:], {FLOAT, INT, NULL})
    return FLOAT


def _clip_code(emit: Emit) -> list[str]:
    x, *bounds = emit.args
    lo = bounds.pop(0) if emit.params["has_min"] else None
    hi = bounds.pop(0) if emit.params["has_max"] else None
    value = x.value
    if hi is not None:
        value = f"{hi.value} if {hi.valid} and {x.value} > {hi.value} else {value}"
    if lo is not None:  # the lower bound is checked first: with lo > hi, x < lo gives lo
        value = f"{lo.value} if {lo.valid} and {x.value} < {lo.value} else ({value})"
    return [f"{emit.value}, {emit.valid} = {value}, {x.valid}"]


def _clip_write(x: pl.Expr, *bounds: pl.Expr, has_min: bool, has_max: bool) -> pl.Expr:
    rest = list(bounds)
    return x.clip(lower_bound=rest.pop(0) if has_min else None, upper_bound=rest.pop(0) if has_max else None)


def _fold(function) -> Any:
    def code(emit: Emit) -> list[str]:
        first, *others = emit.args
        v, m = emit.value, emit.valid
        return [f"{v}, {m} = {first.value}, {first.valid}",
                *(f"{v}, {m} = {function.__name__}({v}, {m}, {arg.value}, {arg.valid})" for arg in others)]

    return code


OPERATORS = (
    Operator("when", ("Ternary",), _when_kind, arguments=3, label="when/then/otherwise",
             code=template("({b}, {bm}) if ({am} and {a} != 0.0) else ({c}, {cm})"),
             render="when({0}).then({1}).otherwise({2})", write=lambda p, t, f: pl.when(p).then(t).otherwise(f)),
    Operator("fill_null", ("FillNull",), selecting, arguments=2, code=template("({a}, {am}) if {am} else ({b}, {bm})"),
             write=lambda x, value: x.fill_null(value)),
    Operator("clip", ("Clip",), _clip_kind, params=("has_min", "has_max"), arguments=None, parse=_clip_parse,
             code=_clip_code, write=_clip_write),
    Operator("max_horizontal", ("MaxHorizontal",), selecting, arguments=None, code=_fold(horizontal_max),
             kernels=(horizontal_max,), write=lambda *xs: pl.max_horizontal(*xs)),
    Operator("min_horizontal", ("MinHorizontal",), selecting, arguments=None, code=_fold(horizontal_min),
             kernels=(horizontal_min,), write=lambda *xs: pl.min_horizontal(*xs)),
)
