"""``cum_sum``: a plain running sum of the non-null values (null in, null out). State: ``[sum]``.

``cum_sum(reverse=True)`` sums from the last row back: it reads the future (``LookAheadError``).

>>> from featurestore.operators import OPERATORS, replay
>>> replay(OPERATORS["cum_sum"], [1.0, None, 2.0, float("nan"), 1.0])
[1.0, None, 3.0, nan, nan]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from featurestore.errors import LookAheadError
from featurestore.operators.base import Operator, arithmetic, kernel

__all__ = ["OPERATORS", "cum_sum_step"]


def _size(params: Mapping[str, Any]) -> int:
    return 1


def _parse(options: Mapping[str, Any]) -> dict[str, Any]:
    if options["reverse"]:
        raise LookAheadError("cum_sum(reverse=True) sums the future")
    return {}


@kernel
def cum_sum_step(S, off, x, valid):
    if valid:
        S[off] = S[off] + x
    return S[off], valid


OPERATORS = (
    Operator("cum_sum", ("CumSum",), arithmetic, parse=_parse, size=_size, step=cum_sum_step,
             write=lambda x: x.cum_sum()),
)
