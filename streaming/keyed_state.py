"""The keyed feature step: per symbol, the engine's state, warmed on stored history, and bar bookkeeping.

The dataflow keys bars by symbol. For each symbol, ``FeatureLogic`` (a Bytewax ``StatefulBatchLogic``)
holds a ``KeyedState``: the engine's ``SymbolState``, the last few bars applied (to tell a repeated
bar from a conflicting one) and the symbol's ``Counts``. Its ``snapshot()`` is what recovery stores.

Warm start: when a symbol's first bar arrives and no state was recovered, the state is built by
running the engine over the stored bars that open before that bar, so the very first row emitted
equals the backfill's row at that time.

A bar is applied when it opens after the last applied bar; a ``BarBatch`` in order takes the
engine's batch path, anything else goes bar by bar. A bar that does not open after the last applied
one is not applied (``docs/semantics.md``): a repeat with identical values is a duplicate,
dropped; one with the same open time but other values is a conflict, and an older one not remembered
is late; both are logged. All three are counted.

>>> import polars as pl
>>> from featurestore.definitions import FeatureView
>>> view = FeatureView("mom", "1m", {"mom": pl.col("close") / pl.col("close").shift(1)})
>>> logic = feature_logic_builder(view, lambda engine, symbol, before_ms: engine.new_state())(None)
>>> out, _ = logic.on_batch([Bar("X", ts, 1.0, 2.0, 0.5, close, 1.0) for ts, close in [(0, 1.0), (60_000, 2.0)]])
>>> [(rows.ts, rows.values) for rows in out]
[([60000, 120000], [(None,), (2.0,)])]
>>> out, _ = logic.on_batch([Bar("X", 60_000, 1.0, 2.0, 0.5, 2.0, 1.0)])  # the same bar again
>>> len(out[0]), out[0].counts
(0, Counts(received=3, applied=2, duplicates=1, late=0, conflicts=0))
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import polars as pl
from bytewax.operators import StatefulBatchLogic

from featurestore.bars import BAR_COLUMNS
from featurestore.definitions import FeatureView
from featurestore.errors import FeatureStoreError
from featurestore.store import BarSeries, Store
from streaming.clock import to_datetime
from streaming.engine import SymbolState, ViewEngine
from streaming.items import Bar, BarBatch, BarItem, Counts, FeatureRows, RowValues

__all__ = ["RECENT_BARS", "FeatureLogic", "KeyedState", "Warm", "feature_logic_builder", "warm_from_store"]

log = logging.getLogger(__name__)

RECENT_BARS = 64  # bars remembered per symbol to classify a re-sent bar as duplicate or conflict
_WARM_CHUNK = 200_000
_PRICES = list(BAR_COLUMNS[2:])  # open, high, low, close, volume
_RUN = 16  # from this many bars in order handed over together, the engine's batch path is the cheaper (measured: 16)

#: ``warm(engine, symbol, before_ms)`` -> the engine state after every known bar opening before ``before_ms``.
Warm = Callable[[ViewEngine, str, int], SymbolState]


def warm_from_store(store: Store, exchange: str) -> Warm:
    """A ``Warm`` that runs the engine over the stored bars of ``exchange`` (cold if none are stored)."""

    def warm(engine: ViewEngine, symbol: str, before_ms: int) -> SymbolState:
        state = engine.new_state()
        try:
            bars = store.scan_series(BarSeries(exchange, engine.view.timeframe, symbol))  # no listing of the store
        except FeatureStoreError:
            log.warning("%s: no stored %s bars on %s: starting cold (rows stay null until the windows fill)",
                        symbol, engine.view.timeframe, exchange)
            return state
        history = bars.filter(pl.col("ts").dt.epoch("ms") < before_ms).select(BAR_COLUMNS).collect()
        for chunk in history.iter_slices(_WARM_CHUNK):
            engine.update_batch(state, chunk)
        return state

    return warm


@dataclass
class KeyedState:
    """What the feature step remembers about one symbol."""

    engine: SymbolState
    recent: dict[int, tuple[float, ...]] = field(default_factory=dict)  # open ms -> (o, h, l, c, v)
    counts: Counts = field(default_factory=Counts)

    def snapshot(self) -> KeyedState:
        return KeyedState(copy.deepcopy(self.engine), dict(self.recent), self.counts)

    def remember(self, bars: list[tuple[int, tuple[float, ...]]]) -> None:
        """Remember ``bars`` (open ms, prices), the last ``RECENT_BARS`` of them and of those remembered before."""
        self.recent.update(bars[-RECENT_BARS:])
        for ts in list(self.recent)[:max(0, len(self.recent) - RECENT_BARS)]:
            del self.recent[ts]


class FeatureLogic(StatefulBatchLogic[BarItem, FeatureRows, KeyedState]):
    """Items of one symbol in, in the batches Bytewax hands over; out, one ``FeatureRows`` per ``BarBatch`` that takes
    the engine's batch path and one for each run of bars applied one by one (the ``Bar`` items of a batch together:
    a replay of one bar per item hands over thousands at once, and a row per item cost each sink a call per bar)."""

    def __init__(self, engine: ViewEngine, warm: Warm, state: KeyedState | None) -> None:
        self.engine, self.warm, self.state = engine, warm, state

    def on_batch(self, values: list[BarItem]) -> tuple[list[FeatureRows], bool]:
        if self.state is None:
            first = values[0]
            ts = first.ts if isinstance(first, Bar) else int(first.bars["ts"].dt.epoch("ms")[0])
            self.state = KeyedState(self.warm(self.engine, first.symbol, ts))
        out: list[FeatureRows] = []
        bars: list[Bar] = []  # the run of bars to apply one by one
        for value in values:
            if isinstance(value, Bar):
                bars.append(value)
                continue
            if bars:
                out.append(self._apply_bars(value.symbol, bars))
                bars = []
            if self._in_order(value.bars["ts"].dt.epoch("ms").to_numpy()):
                out.append(self._apply_batch(value))
            else:
                out.append(self._apply_bars(value.symbol, [
                    Bar(*row) for row in value.bars.select("symbol", pl.col("ts").dt.epoch("ms"), *_PRICES).rows()]))
        if bars:
            out.append(self._apply_bars(bars[0].symbol, bars))
        return out, StatefulBatchLogic.RETAIN

    def snapshot(self) -> KeyedState:
        return self.state.snapshot()

    def _in_order(self, ts: np.ndarray) -> bool:
        """Whether bars opening at ``ts`` (epoch ms) are in order, after the last applied bar."""
        last = self.state.engine.last_bar_ts
        return len(ts) > 0 and (last is None or ts[0] > last) and bool((np.diff(ts) > 0).all())

    def _apply_batch(self, batch: BarBatch) -> FeatureRows:
        tail = batch.bars.tail(RECENT_BARS)
        return self._applied(batch.symbol, self.engine.update_arrays(self.state.engine, batch.bars),
                             list(zip(tail["ts"].dt.epoch("ms").to_list(), tail.select(_PRICES).rows(), strict=True)))

    def _applied(self, symbol: str, rows: tuple[np.ndarray, np.ndarray, np.ndarray],
                 recent: list[tuple[int, tuple[float, ...]]]) -> FeatureRows:
        """The ``FeatureRows`` of bars the engine's batch path applied (its ``rows``), their ``recent`` remembered."""
        ts, values, valid = rows
        state, n = self.state, len(ts)
        state.remember(recent)
        state.counts = state.counts._replace(received=state.counts.received + n, applied=state.counts.applied + n)
        return FeatureRows(symbol, ts.tolist(), RowValues(values, valid), state.counts)

    def _apply_run(self, symbol: str, bars: list[Bar]) -> FeatureRows | None:
        """Bars in order after the last applied one through the engine's batch path over their columns (a replay of
        one bar per item hands over hundreds at once); None, having done nothing, when they are not in order."""
        _, ts, *prices = zip(*bars, strict=True)
        ts = np.array(ts, dtype=np.int64)
        if not self._in_order(ts):
            return None
        columns = np.array(prices, dtype=np.float64)
        columns.flags.writeable = False  # the type polars' columns have: no second compile of the engine's loop
        return self._applied(symbol, self.engine.update_columns(self.state.engine, ts, *columns),
                             _tail(bars, 0, len(bars)))

    def _apply_bars(self, symbol: str, bars: list[Bar]) -> FeatureRows:
        """Apply each bar that opens after the last applied one; count (and log) the others as duplicates,
        conflicts or late. The bars applied are remembered once per run of them, not one by one. A long run of bars
        in order takes the engine's batch path."""
        if len(bars) >= _RUN and (rows := self._apply_run(symbol, bars)) is not None:
            return rows
        state, engine, update = self.state, self.state.engine, self.engine.update
        received, applied, duplicates, late, conflicts = state.counts
        ts_out, values_out = [], []
        run = 0  # where the run of applied bars not yet remembered starts
        for i, bar in enumerate(bars):
            last = engine.last_bar_ts
            if last is None or bar[1] > last:
                row_ts, values = update(engine, *bar[1:])
                ts_out.append(row_ts)
                values_out.append(tuple(values))
                continue
            if run < i:
                state.remember(_tail(bars, run, i))
            run = i + 1
            prices, known = bar[2:], state.recent.get(bar.ts)
            if known == prices:
                duplicates += 1
            elif known is not None:
                conflicts += 1
                log.warning("%s: bar at %s conflicts with the bar applied then (applied %s, received %s); not applied, "
                            "the backfill decides", bar.symbol, to_datetime(bar.ts).isoformat(), known, prices)
            else:
                late += 1
                log.warning("%s: late bar at %s (the last applied bar opened at %s); not applied, the backfill decides",
                            bar.symbol, to_datetime(bar.ts).isoformat(), to_datetime(last).isoformat())
        if run < len(bars):
            state.remember(_tail(bars, run, len(bars)))
        state.counts = Counts(received + len(bars), applied + len(ts_out), duplicates, late, conflicts)
        return FeatureRows(symbol, ts_out, values_out, state.counts)


def _tail(bars: list[Bar], start: int, stop: int) -> list[tuple[int, tuple[float, ...]]]:
    """(open ms, prices) of the last ``RECENT_BARS`` of ``bars[start:stop]``."""
    return [(bar[1], bar[2:]) for bar in bars[max(start, stop - RECENT_BARS):stop]]


def feature_logic_builder(view: FeatureView, warm: Warm) -> Callable[[KeyedState | None], FeatureLogic]:
    """The ``builder(resume_state)`` Bytewax calls for each new symbol (one engine per symbol: thread-safe)."""

    def build(resume_state: KeyedState | None) -> FeatureLogic:
        return FeatureLogic(ViewEngine(view), warm, resume_state)

    return build
