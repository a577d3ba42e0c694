"""Sink: the bars a live flow receives, into the bar store, so the offline store keeps up without an ingest.

Each batch of bars Bytewax hands over is validated and stored in one ``ingest_bars`` call: new bars are
appended as small delta files (``Store.write_bars``; the cost grows with the new bars, not the history).
A later backfill, ``featurestore parity`` and a restarted flow's warm start then read the bars the flow
applied. Bars already stored are skipped, so the bars a source emits again after a restart are not written
twice and the sink needs no recovery state. When a batch is refused (a bar that breaks the bar contract, or
disagrees with the stored bar of its time: an exchange that revised it), its bars are stored one by one and
the refused ones are logged and left out; the feature step does not apply a conflicting bar either.

>>> import tempfile
>>> store = Store(tempfile.mkdtemp())
>>> part = BarStoreSink(store, "binance", "1m").build("bars", 0, 1)
>>> part.write_batch([Bar("BTC/USDT", 1_714_521_600_000, 1.0, 2.0, 0.5, 1.5, 10.0)])
>>> store.scan_bars("binance", "1m").select("symbol", "close").collect().rows()
[('BTC/USDT', 1.5)]
"""

from __future__ import annotations

import logging

import polars as pl
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from featurestore.bars import BAR_COLUMNS, TS_DTYPE
from featurestore.errors import FeatureStoreError
from featurestore.ingest import ingest_bars
from featurestore.store import Store
from streaming.items import Bar, BarItem

__all__ = ["BarStoreSink"]

log = logging.getLogger(__name__)


class BarStoreSink(DynamicSink[BarItem]):
    """Store the ``timeframe`` bars of ``exchange`` that reach it (``Bar`` items: a live source's)."""

    def __init__(self, store: Store, exchange: str, timeframe: str) -> None:
        self.store, self.exchange, self.timeframe = store, exchange, timeframe

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _BarStorePartition:
        return _BarStorePartition(self)


class _BarStorePartition(StatelessSinkPartition[BarItem]):
    def __init__(self, sink: BarStoreSink) -> None:
        self._sink = sink

    def write_batch(self, items: list[BarItem]) -> None:
        bars = [item for item in items if isinstance(item, Bar)]
        if not bars:
            return
        try:
            self._store(bars)
        except FeatureStoreError:
            for bar in bars:
                try:
                    self._store([bar])
                except FeatureStoreError as exc:
                    log.warning("%s: bar at %s ms not stored: %s", bar.symbol, bar.ts, exc)

    def _store(self, bars: list[Bar]) -> None:
        sink = self._sink
        frame = pl.DataFrame(bars, schema=list(BAR_COLUMNS), orient="row").with_columns(
            pl.from_epoch("ts", time_unit="ms").cast(TS_DTYPE))
        ingest_bars(sink.store, frame, exchange=sink.exchange, timeframe=sink.timeframe,
                    source=f"live {sink.exchange} {sink.timeframe} bars")
