"""The records that flow through the streaming dataflow: bars in, feature rows out, per-symbol counters.

A source emits ``Bar`` (one closed bar: live, or replay one bar at a time) or ``BarBatch`` (many bars
of one symbol: batched replay). The keyed feature step turns each ``BarBatch``, and each run of ``Bar`` items
Bytewax hands over together, into one ``FeatureRows``: the rows the bars produced (possibly none) and the
symbol's running ``Counts``.

>>> bar = Bar("BTC/USDT", 1_714_521_600_000, 1.0, 2.0, 0.5, 1.5, 10.0)
>>> bar.symbol, bar.close
('BTC/USDT', 1.5)
>>> Counts(received=3, applied=2, duplicates=1)
Counts(received=3, applied=2, duplicates=1, late=0, conflicts=0)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import polars as pl

__all__ = ["Bar", "BarBatch", "BarItem", "Counts", "FeatureRows", "RowValues"]


class Bar(NamedTuple):
    """One closed bar; ``ts`` is its open time in epoch milliseconds (UTC)."""

    symbol: str
    ts: int
    open: float
    high: float
    low: float
    close: float
    volume: float


@dataclass(frozen=True)
class BarBatch:
    """Bars of one symbol sorted by ``ts``, in the stored bar schema (``symbol``, ``ts``, OHLCV)."""

    symbol: str
    bars: pl.DataFrame


BarItem = Bar | BarBatch


class Counts(NamedTuple):
    """A symbol's running counters: bars received, applied, and not applied (by reason). A tuple: the
    per-bar path builds one for every bar, 3x cheaper than a frozen dataclass."""

    received: int = 0
    applied: int = 0
    duplicates: int = 0  # same ts and values as a bar already applied: dropped
    late: int = 0  # open time not after the last applied bar, and not a known bar: logged, not applied
    conflicts: int = 0  # same ts as a bar already applied but different values: logged, not applied


class RowValues(Sequence[tuple[float | None, ...]]):
    """Feature rows held as the engine's arrays (values, validity), made tuples only when asked for: the
    online sink reads one row of a 1,000-bar window, and turning all of them into tuples took 30% of a
    batched replay.

    >>> import numpy as np
    >>> rows = RowValues(np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([[True, False], [True, True]]))
    >>> len(rows), rows[0], rows[-1], list(rows)
    (2, (1.0, None), (3.0, 4.0), [(1.0, None), (3.0, 4.0)])
    """

    __slots__ = ("_valid", "_values")

    def __init__(self, values: np.ndarray, valid: np.ndarray) -> None:
        self._values, self._valid = values, valid

    def __len__(self) -> int:
        return len(self._values)

    def __getitem__(self, index):  # an int: one row; a slice: a list of rows
        if isinstance(index, slice):
            return list(RowValues(self._values[index], self._valid[index]))
        return tuple(v if ok else None for v, ok in zip(self._values[index].tolist(), self._valid[index].tolist(),
                                                        strict=True))

    def window(self, start: int, stop: int) -> RowValues:
        """Rows ``start:stop`` as ``RowValues`` (no tuples made)."""
        return RowValues(self._values[start:stop], self._valid[start:stop])

    def frame(self, names: Sequence[str]) -> pl.DataFrame:
        """The rows as a Float64 frame with columns ``names``, null where a value is not valid.

        >>> RowValues(np.array([[1.0, 2.0]]), np.array([[True, False]])).frame(["a", "b"]).rows()
        [(1.0, None)]
        """
        columns = [pl.Series(name, self._values[:, j]) for j, name in enumerate(names)]
        return pl.DataFrame([c if valid.all() else c.scatter(np.flatnonzero(~valid), None)
                             for c, valid in zip(columns, self._valid.T, strict=True)])

    def __iter__(self) -> Iterator[tuple[float | None, ...]]:
        if self._valid.all():
            return map(tuple, self._values.tolist())
        return (tuple(v if ok else None for v, ok in zip(row, valid, strict=True))
                for row, valid in zip(self._values.tolist(), self._valid.tolist(), strict=True))


@dataclass(frozen=True)
class FeatureRows:
    """The feature rows one input item produced for ``symbol``, and the symbol's counters after it.

    ``ts`` holds each row's time in epoch ms (the bar's open + timeframe); ``values`` one tuple per row,
    in the view's feature order, ``None`` for null (a list, or the engine's arrays as ``RowValues``).
    """

    symbol: str
    ts: list[int]
    values: Sequence[tuple[float | None, ...]]
    counts: Counts

    def __len__(self) -> int:
        return len(self.ts)
