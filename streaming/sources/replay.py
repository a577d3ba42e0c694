"""Replay of stored bars as a Bytewax source: one partition per symbol, batched, resumable, optionally paced.

Each partition reads its symbol's stored bars with ``start <= ts < end`` and emits them window by
window. Windows are aligned to a fixed grid: window ``k`` holds the bars that open in
``[k * batch * timeframe, (k + 1) * batch * timeframe)``. A window is one ``BarBatch`` or, with
``batch=1``, one ``Bar``. The resume state is the open time of the last bar emitted, and emission
always stops at a window's end, so a resumed partition emits the same windows as an uninterrupted
one: a sink that names its output after a window overwrites it instead of duplicating it.

``speed > 0`` paces the replay: ``speed`` seconds of market time pass per second of clock time, and
a window is emitted once its last bar has closed in market time. ``speed=0`` replays as fast as
possible.

>>> import tempfile
>>> from datetime import datetime, timezone
>>> from featurestore.ingest import ingest_synthetic
>>> from streaming.clock import to_ms
>>> store, t0 = Store(tempfile.mkdtemp()), datetime(2024, 5, 1, tzinfo=timezone.utc)
>>> _ = ingest_synthetic(store, ["BTC/USDT"], "1m", since=t0, until=datetime(2024, 5, 1, 0, 25, tzinfo=timezone.utc),
...                      now=datetime(2025, 1, 1, tzinfo=timezone.utc))
>>> source = ReplaySource(store, "synthetic", "1m", ["BTC/USDT"], batch=10, clock=lambda: 0)
>>> part = source.build_part("replay", "BTC/USDT", None)
>>> [item.bars.height for item in part.next_batch()], to_datetime(part.snapshot()).time()
([10, 10, 5], datetime.time(0, 24))
>>> resumed = source.build_part("replay", "BTC/USDT", resume_state=to_ms(datetime(2024, 5, 1, 0, 9, tzinfo=timezone.utc)))
>>> [item.bars.height for item in resumed.next_batch()]
[10, 5]
"""

from __future__ import annotations

from datetime import datetime
from functools import partial
from itertools import repeat

import numpy as np
import polars as pl
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from featurestore.bars import BAR_COLUMNS
from featurestore.errors import FeatureStoreError
from featurestore.store import BarSeries, Store
from featurestore.timeframes import timeframe_ms
from streaming.clock import Clock, to_datetime
from streaming.items import Bar, BarBatch, BarItem

__all__ = ["ReplaySource"]

_BARS_PER_CALL = 4096  # bars emitted per next_batch call at most (whole windows), when unpaced
# With one Bar per item, items per call at most: Bytewax polls every partition before the steps downstream run, so
# 50 symbols x 4,096 Bars were alive at once, each moved to the collector's oldest generation and traversed there
_ITEMS_PER_CALL = 256
_new_bar = partial(tuple.__new__, Bar)  # Bar from a tuple of its fields, without ``Bar._make``'s Python frame


class ReplaySource(FixedPartitionedSource[BarItem, int]):
    """Stored bars of ``symbols`` (``exchange``, ``timeframe``) with ``start_ms <= ts < end_ms``."""

    def __init__(self, store: Store, exchange: str, timeframe: str, symbols: list[str], *,
                 start_ms: int | None = None, end_ms: int | None = None, batch: int = 1000,
                 speed: float = 0.0, clock: Clock) -> None:
        if batch < 1 or speed < 0:
            raise FeatureStoreError(f"replay needs batch >= 1 and speed >= 0, got batch={batch}, speed={speed}")
        self.store, self.exchange, self.timeframe, self.symbols = store, exchange, timeframe, list(symbols)
        self.start_ms, self.end_ms, self.batch, self.speed, self.clock = start_ms, end_ms, batch, speed, clock

    def list_parts(self) -> list[str]:
        return self.symbols

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _ReplayPartition:
        ts = pl.col("ts").dt.epoch("ms")
        try:  # the symbol's own files: listing the store for each symbol cost 6 ms a symbol with 50 stored
            bars = self.store.scan_series(BarSeries(self.exchange, self.timeframe, for_part)).select(BAR_COLUMNS)
        except FeatureStoreError:
            self.store.scan_bars(self.exchange, self.timeframe, [for_part])  # raises, naming the symbols stored
            raise
        if self.start_ms is not None:
            bars = bars.filter(ts >= self.start_ms)
        if self.end_ms is not None:
            bars = bars.filter(ts < self.end_ms)
        if resume_state is not None:
            bars = bars.filter(ts > resume_state)
        return _ReplayPartition(for_part, bars.collect(), step_ms=timeframe_ms(self.timeframe), batch=self.batch,
                                speed=self.speed, clock=self.clock, last_emitted=resume_state)


class _ReplayPartition(StatefulSourcePartition[BarItem, int]):
    def __init__(self, symbol: str, bars: pl.DataFrame, *, step_ms: int, batch: int, speed: float, clock: Clock,
                 last_emitted: int | None) -> None:
        self._symbol, self._bars, self._step, self._batch = symbol, bars, step_ms, batch
        self._ts = bars["ts"].dt.epoch("ms").to_numpy()
        cuts = (np.flatnonzero(np.diff(self._ts // (batch * step_ms))) + 1).tolist()
        self._starts, self._ends = [0, *cuts], [*cuts, len(self._ts)]
        # batch=1: the bars as Python columns; each Bar is made when emitted, so only the bars in flight are objects
        # (250k Bars made up front stayed alive, and the collector traversed them again and again)
        self._columns = (self._ts.tolist(), *(bars[c].to_list() for c in BAR_COLUMNS[2:])) if batch == 1 else None
        self._window = 0 if len(self._ts) else len(self._starts)
        self._last = last_emitted
        self._speed, self._clock = speed, clock
        self._wall0, self._market0 = clock(), int(self._ts[0]) if len(self._ts) else 0

    def _close_ms(self, window: int) -> int:
        """When the window's last bar closes, in market time."""
        return int(self._ts[self._ends[window] - 1]) + self._step

    def _market_now(self) -> float:
        return self._market0 + (self._clock() - self._wall0) * self._speed

    def next_batch(self) -> list[BarItem]:
        if self._window >= len(self._starts):
            raise StopIteration
        if self._columns is not None and not self._speed and len(self._starts) == len(self._ts):
            return self._next_bars()
        items: list[BarItem] = []
        emitted, symbol = 0, self._symbol
        ts, open_, high, low, close, volume = self._columns or ((),) * 6
        market_now = self._market_now() if self._speed else None
        limit = _BARS_PER_CALL if self._columns is None else _ITEMS_PER_CALL
        while self._window < len(self._starts) and emitted < limit:
            if market_now is not None and self._close_ms(self._window) > market_now:
                break
            start, end = self._starts[self._window], self._ends[self._window]
            if self._columns is not None:
                items.append(Bar(symbol, ts[start], open_[start], high[start], low[start], close[start], volume[start]))
            else:
                items.append(BarBatch(self._symbol, self._bars.slice(start, end - start)))
            emitted += end - start
            self._last = int(self._ts[end - 1])
            self._window += 1
        return items

    def _next_bars(self) -> list[BarItem]:
        """``next_batch`` unpaced, one bar per window: the next bars at once (2x cheaper than window by window)."""
        start = self._window
        end = min(start + _ITEMS_PER_CALL, len(self._ts))
        bars = list(map(_new_bar, zip(repeat(self._symbol), *(column[start:end] for column in self._columns))))
        self._window, self._last = end, self._columns[0][end - 1]
        return bars

    def next_awake(self) -> datetime | None:
        if not self._speed or self._window >= len(self._starts):
            return None
        return to_datetime(self._wall0 + int((self._close_ms(self._window) - self._market0) / self._speed))

    def snapshot(self) -> int | None:
        return self._last
