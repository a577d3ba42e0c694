"""The records that flow through the streaming dataflow: bars in, feature rows out, per-symbol counters.

A source emits ``Bar`` (one closed bar: live, or replay one bar at a time) or ``BarBatch`` (many bars
of one symbol: batched replay). The keyed feature step turns each into one ``FeatureRows``: the rows
the bars produced (possibly none) and the symbol's running ``Counts``.

>>> bar = Bar("BTC/USDT", 1_714_521_600_000, 1.0, 2.0, 0.5, 1.5, 10.0)
>>> bar.symbol, bar.close
('BTC/USDT', 1.5)
>>> Counts(received=3, applied=2, duplicates=1)
Counts(received=3, applied=2, duplicates=1, late=0, conflicts=0)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import polars as pl

__all__ = ["Bar", "BarBatch", "BarItem", "Counts", "FeatureRows"]


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


@dataclass(frozen=True)
class Counts:
    """A symbol's running counters: bars received, applied, and not applied (by reason)."""

    received: int = 0
    applied: int = 0
    duplicates: int = 0  # same ts and values as a bar already applied: dropped
    late: int = 0  # open time not after the last applied bar, and not a known bar: logged, not applied
    conflicts: int = 0  # same ts as a bar already applied but different values: logged, not applied


@dataclass(frozen=True)
class FeatureRows:
    """The feature rows one input item produced for ``symbol``, and the symbol's counters after it.

    ``ts`` holds each row's time in epoch ms (the bar's open + timeframe); ``values`` one tuple per row,
    in the view's feature order, ``None`` for null.
    """

    symbol: str
    ts: list[int]
    values: list[tuple[float | None, ...]]
    counts: Counts

    def __len__(self) -> int:
        return len(self.ts)
