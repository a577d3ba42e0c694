"""Sink: emitted feature rows appended to the store as parquet part files, one per input window.

Parts live beside the backfilled ``kind=features`` files, which stay the source of truth
(``featurestore.layout``: ``kind=stream/view=<name>/version=<v>/exchange=<x>/symbol=<s>/part-<first>-<last>.parquet``).

Columns as in the offline store: ``symbol``, ``ts``, the features, ``created_at``, ``view_version``.
A part is named by its symbol and first/last row time and written atomically; the replay source cuts
windows on a fixed grid, so after a restart a replayed window rewrites the same part: idempotent.

>>> import tempfile
>>> from featurestore.builtin_views import RESEARCH
>>> from streaming.items import Counts, FeatureRows
>>> store = Store(tempfile.mkdtemp())
>>> sink = OfflinePartsSink(store, RESEARCH, RESEARCH.feature_names, "synthetic", clock=lambda: 0)
>>> part = sink.build("parts", 0, 1)
>>> rows = FeatureRows("BTC/USDT", [1714521660000, 1714521720000], [(0.5,) * 14, (0.25,) * 14], Counts(2, 2))
>>> part.write_batch([("BTC/USDT", rows)]); part.write_batch([("BTC/USDT", rows)])  # replayed: same part
>>> [p.name for p in parts_dir(store, RESEARCH).rglob("*.parquet")]
['part-1714521660000-1714521720000.parquet']
>>> scan_parts(store, RESEARCH).select("ts", "ret_1").collect().height
2
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from featurestore.atomic import write_parquet_atomic
from featurestore.bars import TS_DTYPE
from featurestore.definitions import FeatureView
from featurestore.store import Store
from streaming.clock import Clock, to_datetime
from streaming.items import FeatureRows

__all__ = ["OfflinePartsSink", "parts_dir", "scan_parts"]


def parts_dir(store: Store, view: FeatureView) -> Path:
    """Where the parts of the view's current version live."""
    return store.stream_dir(view.name, view.version)


def scan_parts(store: Store, view: FeatureView) -> pl.LazyFrame:
    """Every part of the view's current version (any order; sort by ``symbol``, ``ts`` if needed)."""
    return pl.scan_parquet(sorted(parts_dir(store, view).glob("exchange=*/symbol=*/part-*.parquet")),
                           hive_partitioning=False)


class OfflinePartsSink(DynamicSink[tuple[str, FeatureRows]]):
    """Write each non-empty ``FeatureRows`` as one parquet part."""

    def __init__(self, store: Store, view: FeatureView, feature_names: list[str], exchange: str, *,
                 clock: Clock) -> None:
        self.store, self.view, self.feature_names, self.exchange, self.clock = (
            store, view, feature_names, exchange, clock)

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _PartsPartition:
        return _PartsPartition(self)


class _PartsPartition(StatelessSinkPartition[tuple[str, FeatureRows]]):
    def __init__(self, sink: OfflinePartsSink) -> None:
        self._sink = sink

    def write_batch(self, items: list[tuple[str, FeatureRows]]) -> None:
        sink = self._sink
        for _, rows in items:  # keyed by routing key (streaming.placement): the symbol is the rows'
            if not len(rows):
                continue
            symbol = rows.symbol
            frame = pl.DataFrame(rows.values, schema=dict.fromkeys(sink.feature_names, pl.Float64), orient="row")
            frame = frame.select(
                pl.lit(symbol).alias("symbol"),
                pl.Series("ts", rows.ts).cast(pl.Datetime("ms")).dt.replace_time_zone("UTC").cast(TS_DTYPE),
                *sink.feature_names,
                pl.lit(to_datetime(sink.clock())).cast(pl.Datetime("us", "UTC")).alias("created_at"),
                pl.lit(sink.view.version).alias("view_version"),
            )
            path = sink.store.stream_part(sink.view.name, sink.view.version, sink.exchange, symbol, rows.ts[0],
                                          rows.ts[-1])
            write_parquet_atomic(frame, path, compression="snappy")
