"""``shift(n)``, ``diff(n)`` and ``pct_change(n)``: the value ``n`` bars back, ``n >= 1``.

``shift(n)`` is the value of ``n`` rows before (null for the first ``n`` rows, and where that value is null);
``diff(n)`` is ``x - shift(n)``; ``pct_change(n)`` is ``diff(n) / shift(n)`` as in polars, not
``x / shift(n) - 1`` (the two differ at inf). A negative ``n`` reads ahead (``LookAheadError``); ``n = 0`` and
``null_behavior="drop"`` are no lag at all.

State: ``[filled, head, ring values (n), ring validity (n)]``.

>>> from featurestore.operators import OPERATORS, replay
>>> replay(OPERATORS["shift"], [1.0, 2.0, None, 4.0], n=1)
[None, 1.0, 2.0, None]
>>> replay(OPERATORS["diff"], [1.0, 2.0, 4.0, 8.0], n=2)
[None, None, 3.0, 6.0]
>>> replay(OPERATORS["pct_change"], [1.0, 2.0, 4.0, 8.0], n=1)
[None, 1.0, 1.0, 1.0]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from featurestore.errors import LookAheadError, UnsupportedExpressionError
from featurestore.operators.base import Operator, arithmetic, float_math, kernel, literal_int, selecting

__all__ = ["OPERATORS", "diff_step", "pct_change_step", "shift_step"]


def _size(params: Mapping[str, Any]) -> int:
    return 2 + 2 * params["n"]


def _parse(name: str):
    def parse(null_behavior: str | None, n: Any) -> dict[str, Any]:
        n = literal_int(n, f"{name}(n)")
        if n < 0:
            raise LookAheadError(f"{name}({n}) reads {-n} bar(s) ahead; use {name}(n) with n >= 1")
        if n == 0 or null_behavior == "Drop":
            raise UnsupportedExpressionError(
                f"{name}({n}{', null_behavior=drop' if null_behavior == 'Drop' else ''}) is not a causal lag; "
                f"use n >= 1")
        return {"n": n}

    return parse


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
    if not old_valid:  # the empty slot holds 0.0: plain Python would raise on the division
        return 0.0, False
    return (x - old) / old, valid


def _lag(name: str, polars: str, typing, step) -> Operator:
    return Operator(name, (polars,), typing, params=("n",), parse=_parse(name), size=_size, step=step,
                    write=lambda x, n: getattr(x, name)(n))


OPERATORS = (
    _lag("shift", "Shift", selecting, shift_step),
    _lag("diff", "Diff", arithmetic, diff_step),
    _lag("pct_change", "PctChange", float_math, pct_change_step),
)
