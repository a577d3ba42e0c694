"""``cum_sum``: a plain running sum of the non-null values (null in, null out). State: ``[sum]``."""

from __future__ import annotations

from streaming.engine.ops import kernel

__all__ = ["cum_sum_step", "size"]


def size() -> int:
    return 1


@kernel
def cum_sum_step(S, off, x, valid):
    if valid:
        S[off] = S[off] + x
    return S[off], valid
