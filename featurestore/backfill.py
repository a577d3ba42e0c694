"""Backfill: compute a feature view over stored bars and write the rows to the offline store.

Symbols are processed one at a time over their whole history (an EWM depends on every bar since the
first, so a truncated re-read would not reproduce it): memory holds one symbol's bars and features.
A later run writes only rows not stored yet, and they are bit-identical to a full recompute because
they are cut from one. Stored rows are compared with their recomputed values: if any differs (bars
were inserted into the history under them, even before the first stored row), the symbol's rows are
all replaced.

>>> import tempfile
>>> from datetime import datetime, timezone
>>> from featurestore.ingest import ingest_synthetic
>>> from featurestore.builtin_views import DAILY_TREND
>>> store, now = Store(tempfile.mkdtemp()), datetime(2025, 1, 1, tzinfo=timezone.utc)
>>> _ = ingest_synthetic(store, ["BTC/USDT"], "1d", since=datetime(2024, 1, 1, tzinfo=timezone.utc), now=now)
>>> backfill(store, DAILY_TREND, now=now, progress=False).rows_written
{'BTC/USDT': 366}
>>> backfill(store, DAILY_TREND, now=now, progress=False).rows_written
{'BTC/USDT': 0}
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime

import polars as pl
from tqdm import tqdm

from featurestore.catalog import refresh_catalog
from featurestore.definitions import FeatureView
from featurestore.expressions import VALUE_COLUMNS, columns
from featurestore.offline import read_symbol_features, write_symbol_features
from featurestore.registry import register_view
from featurestore.store import BarSeries, Store

__all__ = ["BackfillReport", "backfill", "backfill_symbols", "prepare_backfill"]

_WRITERS = 2  # symbols being written at once


@dataclass
class BackfillReport:
    view: str
    version: str
    exchange: str
    rows_written: dict[str, int] = field(default_factory=dict)
    bars_read: int = 0
    recomputed: list[str] = field(default_factory=list)

    def add(self, other: BackfillReport) -> BackfillReport:
        """Count ``other``'s symbols in (another worker's share of the same view); return self."""
        self.rows_written.update(other.rows_written)
        self.bars_read += other.bars_read
        self.recomputed += other.recomputed
        return self


def _rows_to_write(rows: pl.DataFrame, stored: pl.DataFrame | None) -> tuple[pl.DataFrame, bool]:
    """(rows, replace): only the rows not stored yet, unless a stored row no longer equals its recomputed
    value (bars were inserted into the history under it), in which case every row is rewritten."""
    if stored is None or stored.is_empty():
        return rows, True
    recomputed = rows.join(stored.select("ts"), on="ts", how="semi")
    if recomputed.height != stored.height or not recomputed.equals(stored.select(rows.columns), null_equal=True):
        return rows, True
    return rows.join(stored.select("ts"), on="ts", how="anti"), False


def prepare_backfill(store: Store, view: FeatureView, *, now: datetime, symbols: list[str] | None = None,
                     exchange: str | None = None) -> tuple[str, list[str]]:
    """(exchange, symbols) a backfill of ``view`` computes (default: every stored symbol), unknown symbols refused
    before anything is written; the view registered (``now`` is the version's first backfill)."""
    exchange = store.resolve_exchange(view.timeframe, exchange)
    chosen = symbols or [s.symbol for s in store.series(exchange=exchange, timeframe=view.timeframe)]
    store.scan_bars(exchange, view.timeframe, chosen)  # refuses unknown symbols before anything is written
    register_view(store, view, now=now)
    return exchange, chosen


def backfill_symbols(store: Store, view: FeatureView, exchange: str, symbols: list[str], *, now: datetime,
                     start: datetime | None = None, end: datetime | None = None,
                     progress: bool = True) -> BackfillReport:
    """Compute and store ``symbols``' rows with ``start <= ts < end`` (the view prepared): all of a backfill's
    work, or one worker's share of it (``streaming.backfill``)."""
    report = BackfillReport(view.name, view.version, exchange)
    needed = ["symbol", "ts", *sorted({c for node in view.nodes.values() for c in columns(node) if c in VALUE_COLUMNS})]
    # Writer threads: symbols i-1 and i are encoded and written (polars releases the GIL) while symbol i+1 is
    # read and computed, so at most WRITERS + 1 symbols are in memory. Encoding parquet costs more than
    # computing the features: with one writer the backfill waited for it half of the time.
    with ThreadPoolExecutor(max_workers=_WRITERS, thread_name_prefix="backfill-writer") as writer:
        pending: deque[tuple[str, Future[int]]] = deque()
        for symbol in tqdm(symbols, desc=f"backfill {view.name}", unit="symbol", disable=None if progress else True):
            bars = store.read_series(BarSeries(exchange, view.timeframe, symbol), needed)
            rows = view.compute_symbol(bars)
            if start is not None:
                rows = rows.filter(pl.col("ts") >= start)
            if end is not None:
                rows = rows.filter(pl.col("ts") < end)
            stored = read_symbol_features(store, view, exchange, symbol)
            to_write, replace = _rows_to_write(rows, stored)
            if replace and stored is not None:
                report.recomputed.append(symbol)
            report.bars_read += bars.height
            if len(pending) == _WRITERS:
                done, written = pending.popleft()
                report.rows_written[done] = written.result()
            pending.append((symbol, writer.submit(write_symbol_features, store, view, exchange, symbol, to_write,
                                                  now=now, replace=replace)))
        for done, written in pending:
            report.rows_written[done] = written.result()
    return report


def backfill(store: Store, view: FeatureView, *, now: datetime, symbols: list[str] | None = None,
             exchange: str | None = None, start: datetime | None = None, end: datetime | None = None,
             progress: bool = True) -> BackfillReport:
    """Compute ``view`` for ``symbols`` (default: all stored) and store rows with ``start <= ts < end``."""
    exchange, chosen = prepare_backfill(store, view, now=now, symbols=symbols, exchange=exchange)
    report = backfill_symbols(store, view, exchange, chosen, now=now, start=start, end=end, progress=progress)
    refresh_catalog(store)
    return report
