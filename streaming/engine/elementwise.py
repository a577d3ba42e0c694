"""Elementwise operations on one value, with polars' semantics bit for bit.

Values travel as ``(value, valid)`` pairs (``valid=False`` is a null; NaN is a value). Polars
evaluates these with Rust's f64 arithmetic and the platform libm, the same libm numba calls, so
results are identical; what needs care is semantics: float comparisons use a total order in which
NaN equals NaN and is greater than everything; ``%`` and ``//`` floor; boolean logic is Kleene
(``False & null`` is ``False``); ``a % b`` is ``a - b * floor(a / b)``; ``max_horizontal``/``min_horizontal`` skip nulls and NaN.
Booleans travel as 1.0/0.0.
"""

from __future__ import annotations

import math

import numpy as np

from streaming.engine.ops import kernel

__all__ = [
    "cmp_eq",
    "cmp_ge",
    "cmp_gt",
    "cmp_le",
    "cmp_lt",
    "cmp_neq",
    "day_of",
    "floor_div",
    "horizontal_max",
    "horizontal_min",
    "hour_of",
    "kleene_and",
    "kleene_or",
    "kleene_xor",
    "minute_of",
    "modulo",
    "month_of",
    "sign",
    "weekday_of",
]


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


@kernel
def floor_div(a, b):
    return np.floor(a / b)


@kernel
def modulo(a, b):
    return a - b * np.floor(a / b)


@kernel
def sign(a):
    if math.isnan(a):
        return a
    if a > 0.0:
        return 1.0
    if a < 0.0:
        return -1.0
    return a


@kernel
def kleene_and(a, av, b, bv):
    if (av and a == 0.0) or (bv and b == 0.0):
        return 0.0, True
    return 1.0, av and bv


@kernel
def kleene_or(a, av, b, bv):
    if (av and a != 0.0) or (bv and b != 0.0):
        return 1.0, True
    return 0.0, av and bv


@kernel
def kleene_xor(a, av, b, bv):
    return (1.0 if (a != 0.0) != (b != 0.0) else 0.0), av and bv


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


_DAY_MS = 86_400_000.0


@kernel
def hour_of(ts_ms):
    return math.floor(ts_ms / 3_600_000.0) % 24.0


@kernel
def minute_of(ts_ms):
    return math.floor(ts_ms / 60_000.0) % 60.0


@kernel
def weekday_of(ts_ms):
    """ISO weekday, Monday = 1 ... Sunday = 7 (1970-01-01 was a Thursday)."""
    return (math.floor(ts_ms / _DAY_MS) + 3.0) % 7.0 + 1.0


@kernel
def _civil(ts_ms):
    """(year, month, day) of a UTC epoch-millisecond time (Howard Hinnant's days_from_civil inverse)."""
    z = math.floor(ts_ms / _DAY_MS) + 719468
    era = (z if z >= 0 else z - 146096) // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (1 if month <= 2 else 0), month, day


@kernel
def day_of(ts_ms):
    return float(_civil(ts_ms)[2])


@kernel
def month_of(ts_ms):
    return float(_civil(ts_ms)[1])
