"""Comparisons ``== != < <= > >=``, elementwise, giving booleans (1.0/0.0).

Polars compares floats in a total order in which NaN equals NaN and is greater than every other value
(``-0.0 == 0.0``). Null in, null out. Integers and booleans compare as their float values.

>>> cmp_eq(float("nan"), float("nan")), cmp_gt(float("nan"), float("inf")), cmp_lt(-0.0, 0.0)
(1.0, 1.0, 0.0)
"""

from __future__ import annotations

import math

from featurestore.operators.base import Operator, comparison, kernel, template

__all__ = ["OPERATORS", "cmp_eq", "cmp_ge", "cmp_gt", "cmp_le", "cmp_lt", "cmp_neq"]


@kernel
def _greater(a, b):
    """a > b in polars' total order (NaN is the largest value and equals itself)."""
    if math.isnan(a):
        return not math.isnan(b)
    if math.isnan(b):
        return False
    return a > b


@kernel
def cmp_eq(a, b):
    return 1.0 if (a == b or (math.isnan(a) and math.isnan(b))) else 0.0


@kernel
def cmp_neq(a, b):
    return 1.0 - cmp_eq(a, b)


@kernel
def cmp_gt(a, b):
    return 1.0 if _greater(a, b) else 0.0


@kernel
def cmp_lt(a, b):
    return 1.0 if _greater(b, a) else 0.0


@kernel
def cmp_ge(a, b):
    return 1.0 if not _greater(b, a) else 0.0


@kernel
def cmp_le(a, b):
    return 1.0 if not _greater(a, b) else 0.0


def _compare(name: str, polars: str, infix: str, function) -> Operator:
    method = {"eq": "__eq__", "neq": "__ne__"}.get(name, f"__{name}__")
    return Operator(name, (polars,), comparison, arguments=2, infix=infix,
                    code=template(f"{function.__name__}({{a}}, {{b}}), {{valid}}"), kernels=(function,),
                    write=lambda a, b: getattr(a, method)(b))


OPERATORS = (
    _compare("eq", "Eq", "==", cmp_eq),
    _compare("neq", "NotEq", "!=", cmp_neq),
    _compare("lt", "Lt", "<", cmp_lt),
    _compare("le", "LtEq", "<=", cmp_le),
    _compare("gt", "Gt", ">", cmp_gt),
    _compare("ge", "GtEq", ">=", cmp_ge),
)
