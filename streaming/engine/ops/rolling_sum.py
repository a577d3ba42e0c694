"""``rolling_sum`` and ``rolling_mean`` over a fixed window, as polars' ``SumWindow`` computes them.

A running Kahan sum with separate compensation terms for additions and subtractions; the value
leaving the window is subtracted before the entering one is added. NaN and +/-inf are counted, not
summed (the result is inf, -inf or NaN by those counts). A window of one resets each step.

State: ``[sum, err_add, err_sub, non_finite, pos_inf, neg_inf, nulls, filled, head, ring (w), valid (w)]``.
"""

from __future__ import annotations

import math

from streaming.engine.ops import kernel

__all__ = ["rolling_mean_step", "rolling_sum_step", "size"]

_HEADER = 9


def size(window: int) -> int:
    return _HEADER + 2 * window


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
