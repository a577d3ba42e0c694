"""``rolling_min`` and ``rolling_max``: exact by construction (a scan of the window).

A NaN anywhere in the window makes the result NaN, as in polars. State:
``[filled, head, nulls, ring (w), valid (w)]``.
"""

from __future__ import annotations

import math

from streaming.engine.ops import kernel

__all__ = ["rolling_max_step", "rolling_min_step", "size"]


def size(window: int) -> int:
    return 3 + 2 * window


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
