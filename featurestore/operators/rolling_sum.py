"""``rolling_sum`` and ``rolling_mean`` over a fixed window, as polars' ``SumWindow`` computes them.

The window at row ``i`` holds rows ``i - window_size + 1 .. i``; the result is null until it holds
``min_samples`` non-null values (default: ``window_size``). A running Kahan sum with separate compensation
terms for additions and subtractions; the value leaving the window is subtracted before the entering one is
added. NaN and +/-inf are counted, not summed (the result is inf, -inf or NaN by those counts). A window of
one resets each step. ``rolling_mean`` is the sum divided by the number of non-null values.

State: ``[sum, err_add, err_sub, non_finite, pos_inf, neg_inf, nulls, filled, head, ring (w), valid (w)]``.

>>> from featurestore.operators import OPERATORS, replay
>>> replay(OPERATORS["rolling_sum"], [1.0, 2.0, None, 4.0, float("inf")], window_size=2, min_samples=1)
[1.0, 3.0, 2.0, 4.0, inf]
>>> replay(OPERATORS["rolling_mean"], [1.0, 2.0, None, 4.0], window_size=2, min_samples=2)
[None, 1.5, None, None]
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from featurestore.operators.base import Operator, arithmetic, float_math, kernel, window_params

__all__ = ["OPERATORS", "rolling_mean_step", "rolling_sum_step"]

_HEADER = 9


def _size(params: Mapping[str, Any]) -> int:
    return _HEADER + 2 * params["window_size"]


@kernel
def _add(S, off, x):
    if math.isfinite(x):
        y = x - S[off + 1]
        total = S[off] + y
        S[off + 1] = (total - S[off]) - y
        S[off] = total
    else:
        S[off + 3] += 1.0
        S[off + 4] += 1.0 if x > 0.0 else 0.0
        S[off + 5] += 1.0 if x < 0.0 else 0.0


@kernel
def _sub(S, off, x):
    if math.isfinite(x):
        y = (0.0 - x) - S[off + 2]
        total = S[off] + y
        S[off + 2] = (total - S[off]) - y
        S[off] = total
    else:
        S[off + 3] -= 1.0
        S[off + 4] -= 1.0 if x > 0.0 else 0.0
        S[off + 5] -= 1.0 if x < 0.0 else 0.0


@kernel
def _push(S, off, x, valid, window):
    """Slide the window by one value; return the number of non-null values in it."""
    filled, head = int(S[off + 7]), int(S[off + 8])
    ring, flags = off + _HEADER, off + _HEADER + window
    if filled == window:
        if window == 1:
            for i in range(7):
                S[off + i] = 0.0
        elif S[flags + head] != 0.0:
            _sub(S, off, S[ring + head])
        else:
            S[off + 6] -= 1.0
        filled -= 1
    S[ring + head] = x
    S[flags + head] = 1.0 if valid else 0.0
    if valid:
        _add(S, off, x)
    else:
        S[off + 6] += 1.0
    S[off + 7] = filled + 1
    S[off + 8] = (head + 1) % window
    return filled + 1 - int(S[off + 6])


@kernel
def _total(S, off):
    non_finite = S[off + 3]
    if non_finite == 0.0:
        return S[off]
    if non_finite == S[off + 4]:
        return math.inf
    if non_finite == S[off + 5]:
        return -math.inf
    return math.nan


@kernel
def rolling_sum_step(S, off, x, valid, window, min_samples):
    count = _push(S, off, x, valid, window)
    return _total(S, off), count >= min_samples and count > 0


@kernel
def rolling_mean_step(S, off, x, valid, window, min_samples):
    count = _push(S, off, x, valid, window)
    ok = count >= min_samples and count > 0
    return (_total(S, off) / count if ok else 0.0), ok


def _rolling(name: str, polars: str, typing, step) -> Operator:
    return Operator(name, (f"RollingExpr.{polars}",), typing, params=("window_size", "min_samples"),
                    parse=lambda options: window_params(name, options), size=_size, step=step,
                    write=lambda x, window_size, min_samples: getattr(x, name)(window_size, min_samples=min_samples))


OPERATORS = (
    _rolling("rolling_sum", "Sum", arithmetic, rolling_sum_step),
    _rolling("rolling_mean", "Mean", float_math, rolling_mean_step),
)
