"""``rolling_var`` and ``rolling_std`` over a fixed window, as polars computes them.

Same window as ``rolling_sum`` (rows ``i - window_size + 1 .. i``, null until ``min_samples`` non-null
values, and null while the count is ``<= ddof``; ``ddof=1`` by default). Polars keeps the window as a
two-stack queue of Welford states ``(weight, mean, dp)``: values enter a back stack whose running state grows
by ``insert_one``; when the oldest value must leave and the front stack is empty, the back stack is flipped
into the front stack as suffix states (newest first, each older value inserted into the newer suffix); the
window's state is the back state merged with the front top (Chan's parallel merge). No subtraction ever
happens. Non-finite values enter as 0.0 and are counted (any in the window makes the result NaN); negative
variance clamps to 0; std is sqrt(var).

State: ``[nulls, non_finite, filled, head, front_size, back_size, back_w, back_mean, back_dp,
ring (w), valid (w), front_w (w), front_mean (w), front_dp (w), back_values (w)]``.

>>> from featurestore.operators import OPERATORS, replay
>>> replay(OPERATORS["rolling_var"], [1.0, 2.0, 4.0, None, 5.0], window_size=3, min_samples=2, ddof=1)
[None, 0.5, 2.333333333333333, 2.0, 0.5]
>>> replay(OPERATORS["rolling_std"], [1.0, 3.0, float("inf")], window_size=2, min_samples=2, ddof=0)
[None, 1.0, nan]
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from featurestore.operators.base import Operator, float_math, kernel, window_params

__all__ = ["OPERATORS", "rolling_std_step", "rolling_var_step"]

_HEADER = 9


def _size(params: Mapping[str, Any]) -> int:
    return _HEADER + 6 * params["window_size"]


@kernel
def _insert(weight, mean, dp, x):
    new_weight = weight + 1.0
    delta = x - mean
    new_mean = mean + delta / new_weight
    dp += (x - new_mean) * delta
    if new_weight == 0.0:
        return new_weight, 0.0, 0.0
    return new_weight, new_mean, dp


@kernel
def _combine(weight, mean, dp, o_weight, o_mean, o_dp):
    if o_weight == 0.0:
        return weight, mean, dp
    new_weight = weight + o_weight
    frac = o_weight / new_weight
    delta = o_mean - mean
    new_mean = mean + delta * frac
    dp += o_dp + o_weight * (o_mean - new_mean) * delta
    if new_weight == 0.0:
        return new_weight, 0.0, 0.0
    return new_weight, new_mean, dp


@kernel
def _flip(S, off, window):
    front_w, front_m, front_dp = off + _HEADER + 2 * window, off + _HEADER + 3 * window, off + _HEADER + 4 * window
    back = off + _HEADER + 5 * window
    top = int(S[off + 4])
    weight, mean, dp = 0.0, 0.0, 0.0
    for j in range(int(S[off + 5]) - 1, -1, -1):
        if top == int(S[off + 4]):
            weight, mean, dp = 1.0, S[back + j], 0.0
        else:
            weight, mean, dp = _insert(weight, mean, dp, S[back + j])
        S[front_w + top], S[front_m + top], S[front_dp + top] = weight, mean, dp
        top += 1
    S[off + 4] = top
    S[off + 5] = 0.0
    S[off + 6], S[off + 7], S[off + 8] = 0.0, 0.0, 0.0


@kernel
def rolling_var_step(S, off, x, valid, window, min_samples, ddof):
    filled, head = int(S[off + 2]), int(S[off + 3])
    ring, flags = off + _HEADER, off + _HEADER + window
    if filled == window:
        if S[flags + head] != 0.0:
            if not math.isfinite(S[ring + head]):
                S[off + 1] -= 1.0
            if S[off + 4] == 0.0:
                _flip(S, off, window)
            S[off + 4] -= 1.0
        else:
            S[off] -= 1.0
        filled -= 1
    S[ring + head] = x
    S[flags + head] = 1.0 if valid else 0.0
    if valid:
        value = x
        if not math.isfinite(x):
            S[off + 1] += 1.0
            value = 0.0
        back = int(S[off + 5])
        S[off + _HEADER + 5 * window + back] = value
        S[off + 5] = back + 1
        S[off + 6], S[off + 7], S[off + 8] = _insert(S[off + 6], S[off + 7], S[off + 8], value)
    else:
        S[off] += 1.0
    S[off + 2] = filled + 1
    S[off + 3] = (head + 1) % window
    count = filled + 1 - int(S[off])
    if count < min_samples:
        return 0.0, False
    weight, mean, dp = S[off + 6], S[off + 7], S[off + 8]
    top = int(S[off + 4]) - 1
    if top >= 0:
        base = off + _HEADER + 2 * window
        weight, mean, dp = _combine(weight, mean, dp, S[base + top], S[base + window + top],
                                    S[base + 2 * window + top])
    if weight <= ddof:
        return 0.0, False
    if S[off + 1] > 0.0:
        return math.nan, True
    var = dp / (weight - ddof)
    return (0.0 if var < 0.0 else var), True


@kernel
def rolling_std_step(S, off, x, valid, window, min_samples, ddof):
    var, ok = rolling_var_step(S, off, x, valid, window, min_samples, ddof)
    return math.sqrt(var), ok


def _rolling(name: str, polars: str, step) -> Operator:
    return Operator(name, (f"RollingExpr.{polars}",), float_math, params=("window_size", "min_samples", "ddof"),
                    parse=lambda options: window_params(name, options, ddof=True), size=_size, step=step,
                    write=lambda x, window_size, min_samples, ddof: getattr(x, name)(
                        window_size, min_samples=min_samples, ddof=ddof))


OPERATORS = (
    _rolling("rolling_var", "Var", rolling_var_step),
    _rolling("rolling_std", "Std", rolling_std_step),
)
