"""Elementwise math functions: ``log(base)``, ``log1p``, ``exp``, ``sqrt``, ``sin``, ``cos``, ``tan``, ``tanh``.

Each is the platform libm's function, which polars (Rust's f64 methods) and numba both call; integers are
cast to Float64 first. ``log(base)`` is ``ln(x) / ln(base)`` with a literal base (``log()`` is the natural
log, base e). Null in, null out.

>>> import polars as pl
>>> from featurestore.expressions import parse
>>> parse(pl.col("close").log(10)).params
(('base', 10.0),)
"""

from __future__ import annotations

from typing import Any

from featurestore.errors import UnsupportedExpressionError
from featurestore.operators.base import Expression, Operator, float_math, template

__all__ = ["OPERATORS"]


def _log_parse(options: Any, base: Any) -> dict[str, Any]:
    if isinstance(base, Expression) or base is None or isinstance(base, bool):
        raise UnsupportedExpressionError("log(base) needs a literal base")
    return {"base": float(base)}


def _function(name: str, polars: str, call: str) -> Operator:
    return Operator(name, (polars,), float_math, code=template(f"{call}({{a}}), {{valid}}"),
                    write=lambda a: getattr(a, name)())


OPERATORS = (
    Operator("log", ("Log",), float_math, params=("base",), parse=_log_parse,
             code=template("math.log({a}) / math.log({base!r}), {valid}"), write=lambda a, base: a.log(base)),
    _function("log1p", "Log1p", "math.log1p"),
    _function("exp", "Exp", "math.exp"),
    _function("sqrt", "Pow.Sqrt", "math.sqrt"),
    _function("sin", "Trigonometry.Sin", "math.sin"),
    _function("cos", "Trigonometry.Cos", "math.cos"),
    _function("tan", "Trigonometry.Tan", "math.tan"),
    _function("tanh", "Trigonometry.Tanh", "math.tanh"),
)
