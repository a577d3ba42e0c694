"""``rolling_min`` and ``rolling_max``: exact by construction (a scan of the window).

Same window as ``rolling_sum`` (rows ``i - window_size + 1 .. i``, null until ``min_samples`` non-null
values). A NaN anywhere in the window makes the result NaN, as in polars; among equal values the oldest wins
(so ``0.0`` and ``-0.0`` keep polars' choice). State: ``[filled, head, nulls, ring (w), valid (w)]``.

>>> from featurestore.operators import OPERATORS, replay
>>> replay(OPERATORS["rolling_max"], [1.0, 3.0, None, 2.0, float("nan"), 0.0], window_size=2, min_samples=1)
[1.0, 3.0, 3.0, 2.0, nan, nan]
>>> replay(OPERATORS["rolling_min"], [1.0, 3.0, 2.0], window_size=2, min_samples=2)
[None, 1.0, 2.0]
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from featurestore.operators.base import Operator, kernel, selecting, window_params

__all__ = ["OPERATORS", "rolling_max_step", "rolling_min_step"]


def _size(params: Mapping[str, Any]) -> int:
    return 3 + 2 * params["window_size"]


@kernel
def _push(S, off, x, valid, window):
    filled, head = int(S[off]), int(S[off + 1])
    flags = off + 3 + window
    if filled == window:
        if S[flags + head] == 0.0:
            S[off + 2] -= 1.0
        filled -= 1
    S[off + 3 + head] = x
    S[flags + head] = 1.0 if valid else 0.0
    if not valid:
        S[off + 2] += 1.0
    S[off] = filled + 1
    S[off + 1] = (head + 1) % window
    return filled + 1 - int(S[off + 2])


@kernel
def _extreme(S, off, window, sign):
    """Oldest to newest; a later value replaces the best only if strictly better (so 0.0 beats -0.0 first)."""
    best, seen = 0.0, False
    filled = int(S[off])
    first = (int(S[off + 1]) - filled) % window
    for k in range(filled):
        i = (first + k) % window
        if S[off + 3 + window + i] != 0.0:
            value = S[off + 3 + i]
            if math.isnan(value):
                return math.nan
            if not seen or value * sign > best * sign:
                best, seen = value, True
    return best


@kernel
def rolling_max_step(S, off, x, valid, window, min_samples):
    count = _push(S, off, x, valid, window)
    ok = count >= min_samples and count > 0
    return (_extreme(S, off, window, 1.0) if ok else 0.0), ok


@kernel
def rolling_min_step(S, off, x, valid, window, min_samples):
    count = _push(S, off, x, valid, window)
    ok = count >= min_samples and count > 0
    return (_extreme(S, off, window, -1.0) if ok else 0.0), ok


def _rolling(name: str, polars: str, step) -> Operator:
    return Operator(name, (f"RollingExpr.{polars}",), selecting, params=("window_size", "min_samples"),
                    parse=lambda options: window_params(name, options), size=_size, step=step,
                    write=lambda x, window_size, min_samples: getattr(x, name)(window_size, min_samples=min_samples))


OPERATORS = (
    _rolling("rolling_min", "Min", rolling_min_step),
    _rolling("rolling_max", "Max", rolling_max_step),
)
