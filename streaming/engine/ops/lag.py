"""``shift(n)``, ``diff(n)`` and ``pct_change(n)``: the value ``n`` bars back.

``pct_change`` is ``diff(n) / shift(n)`` as in polars (not ``x / shift(n) - 1``: they differ at inf).

State: ``[filled, head, ring values (n), ring validity (n)]``.
"""

from __future__ import annotations

from streaming.engine.ops import kernel

__all__ = ["diff_step", "pct_change_step", "shift_step", "size"]


def size(n: int) -> int:
    return 2 + 2 * n


@kernel
def shift_step(S, off, x, valid, n):
    filled, head = int(S[off]), int(S[off + 1])
    old, old_valid = S[off + 2 + head], S[off + 2 + n + head] != 0.0
    if filled < n:
        old_valid = False
        S[off] = filled + 1
    S[off + 2 + head] = x
    S[off + 2 + n + head] = 1.0 if valid else 0.0
    S[off + 1] = (head + 1) % n
    return old, old_valid


@kernel
def diff_step(S, off, x, valid, n):
    old, old_valid = shift_step(S, off, x, valid, n)
    return x - old, valid and old_valid


@kernel
def pct_change_step(S, off, x, valid, n):
    old, old_valid = shift_step(S, off, x, valid, n)
    return (x - old) / old, valid and old_valid
