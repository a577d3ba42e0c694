"""Sink: the row log, every feature row the flow computed (the online store got the newest of each item),
as parquet parts beside the offline store. ``featurestore consistency`` compares it with a recomputation
from the offline store after the fact (``streaming.consistency``).

Parts live beside the backfilled ``kind=features`` files, which stay the source of truth
(``featurestore.layout``: ``kind=stream/view=<name>/version=<v>/exchange=<x>/symbol=<s>/part-<start>-<end>.parquet``).
Columns as in the offline store: ``symbol``, ``ts``, the features, ``created_at`` (when the flow logged the
row: the clock of the run that first wrote it), ``view_version``; ``symbol`` lives in the path only, like
every partition key (``featurestore.store``).

A part holds one symbol's rows of one cell of a fixed grid of row times, ``CELL_BARS`` bars of the view's
timeframe (a UTC day of 1m rows), ``start <= ts < end``. One partition per symbol keeps the rows of the
cell in progress: a cell's part is written when a row of a later cell arrives, the cell in progress every
``flush_every_ms`` of clock time (rewritten as it grows) and when the flow ends. The rows kept are the
partition's recovery state, so after a restart a part ends with exactly the rows of an uninterrupted run;
a run that reaches a cell an earlier run logged (a replay continued or repeated) adds its rows to the part,
and a row logged already keeps its first values. Parts are written atomically.

>>> import tempfile
>>> from featurestore.builtin_views import RESEARCH
>>> from streaming.items import Counts, FeatureRows
>>> store = Store(tempfile.mkdtemp())
>>> sink = OfflinePartsSink(store, RESEARCH, RESEARCH.feature_names, "synthetic", {"BTC/USDT": "BTC/USDT"},
...                         clock=lambda: 0)
>>> part = sink.build_part("parts", "BTC/USDT", None)
>>> day = 1714521600000  # 2024-05-01
>>> part.write_batch([FeatureRows("BTC/USDT", [day + 60_000, day + 120_000], [(0.5,) * 14, (0.25,) * 14], Counts())])
>>> part.write_batch([FeatureRows("BTC/USDT", [day + 86_400_000], [(1.0,) * 14], Counts())])  # the next day
>>> part.close()
>>> [p.name for p in sorted(parts_dir(store, RESEARCH).rglob("*.parquet"))]
['part-1714521600000-1714608000000.parquet', 'part-1714608000000-1714694400000.parquet']
>>> scan_parts(store, RESEARCH).select("ts", "ret_1").collect().height
3
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote
from zlib import adler32

import polars as pl
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

from featurestore.atomic import write_parquet_atomic
from featurestore.bars import TS_DTYPE
from featurestore.definitions import FeatureView
from featurestore.store import Store, scan_partition
from featurestore.timeframes import timeframe_ms
from streaming.clock import Clock
from streaming.items import FeatureRows, RowValues
from streaming.sinks.metrics import refuse_other_version

__all__ = ["CELL_BARS", "OfflinePartsSink", "parts_dir", "scan_parts"]

CELL_BARS = 1440
_CREATED = pl.Datetime("us", "UTC")


def parts_dir(store: Store, view: FeatureView) -> Path:
    """Where the parts of the view's current version live."""
    return store.stream_dir(view.name, view.version)


def scan_parts(store: Store, view: FeatureView, exchange: str | None = None) -> pl.LazyFrame:
    """Every part of the view's current version (of one ``exchange``, or all), with ``symbol`` from the
    paths (any order; sort by ``symbol``, ``ts`` if needed); an empty frame when there is none."""
    exchanges = "exchange=*" if exchange is None else f"exchange={quote(exchange, safe='')}"
    files = sorted(parts_dir(store, view).glob(f"{exchanges}/symbol=*/part-*.parquet"))
    scans = [scan_partition(list(group), {"symbol": symbol})
             for symbol, group in itertools.groupby(files, key=store.stream_part_symbol)]
    return pl.concat(scans) if scans else pl.LazyFrame()


@dataclass
class _Cell:
    """The rows of one symbol's cell in progress: chunks as they came (a stored part's frame, the engine's
    arrays, or row tuples) with the time each was logged; ``dirty`` when some are not in the part yet."""

    index: int
    version: str  # the view version whose rows these are
    chunks: list[tuple[list[int], RowValues | list | pl.DataFrame, int]] = field(default_factory=list)
    dirty: bool = False

    def copy(self) -> _Cell:
        return _Cell(self.index, self.version, [(ts, rows if isinstance(rows, RowValues | pl.DataFrame) else list(rows), at)
                                  for ts, rows, at in self.chunks], self.dirty)


class OfflinePartsSink(FixedPartitionedSink[FeatureRows, "_Cell | None"]):
    """Log every row as parquet parts, one per symbol and cell: one partition per symbol, named by its routing
    key (``keys``: symbol -> key, ``streaming.placement``); this process lists the keys in ``local`` (default
    all), so each symbol's rows are logged on the process that computes them."""

    def __init__(self, store: Store, view: FeatureView, feature_names: list[str], exchange: str,
                 keys: Mapping[str, str], *, clock: Clock, local: list[str] | None = None,
                 flush_every_ms: int = 10_000) -> None:
        self.store, self.view, self.feature_names, self.exchange, self.clock = (
            store, view, feature_names, exchange, clock)
        self.flush_every_ms = flush_every_ms
        self.cell_ms = CELL_BARS * timeframe_ms(view.timeframe)
        self._symbol = {key: symbol for symbol, key in keys.items()}
        self._index = {key: i for i, key in enumerate(sorted(self._symbol))}  # the global order of the partitions
        self._local = sorted(keys[symbol] for symbol in (keys if local is None else local))

    def list_parts(self) -> list[str]:
        return self._local

    def part_fn(self, item_key: str) -> int:
        return self._index.get(item_key, adler32(item_key.encode()))

    def build_part(self, step_id: str, for_part: str, resume_state: _Cell | None) -> _PartsPartition:
        if resume_state is not None:  # never write rows of another version under this version's path
            refuse_other_version(self.view, resume_state.version)
        return _PartsPartition(self, self._symbol[for_part], resume_state)

    def part_path(self, symbol: str, index: int) -> Path:
        start = index * self.cell_ms
        return self.store.stream_part(self.view.name, self.view.version, self.exchange, symbol, start,
                                      start + self.cell_ms)


class _PartsPartition(StatefulSinkPartition[FeatureRows, "_Cell | None"]):
    def __init__(self, sink: OfflinePartsSink, symbol: str, cell: _Cell | None) -> None:
        self._sink, self._symbol, self._cell = sink, symbol, cell
        self._written_at = sink.clock()

    def write_batch(self, values: list[FeatureRows]) -> None:
        sink, now = self._sink, self._sink.clock()
        cell_ms = sink.cell_ms
        for rows in values:
            if not len(rows):
                continue
            first_cell, last_cell = rows.ts[0] // cell_ms, rows.ts[-1] // cell_ms
            if first_cell == last_cell:
                self._add(first_cell, rows.ts, rows.values, now)
                continue
            start = 0
            for end in range(1, len(rows) + 1):  # a window across cells: split it at each boundary
                if end == len(rows) or rows.ts[end] // cell_ms != rows.ts[start] // cell_ms:
                    chunk = (rows.values.window(start, end) if isinstance(rows.values, RowValues)
                             else rows.values[start:end])
                    self._add(rows.ts[start] // cell_ms, rows.ts[start:end], chunk, now)
                    start = end
        if self._cell is not None and self._cell.dirty and now - self._written_at >= sink.flush_every_ms:
            self._write(self._cell)
            self._written_at = now

    def _add(self, index: int, ts: list[int], rows: RowValues | list, now: int) -> None:
        cell = self._cell
        if cell is None or cell.index != index:
            if cell is not None and cell.dirty:
                self._write(cell)  # complete: a row of a later cell arrived
            path = self._sink.part_path(self._symbol, index)
            stored = [] if not path.exists() else [([], scan_partition([path], {"symbol": self._symbol}).collect(), 0)]
            cell = self._cell = _Cell(index, self._sink.view.version, stored)
        chunks = cell.chunks
        if isinstance(rows, RowValues):
            chunks.append((list(ts), rows, now))
        elif chunks and isinstance(chunks[-1][1], list):  # bar by bar: extend the open chunk
            last_ts, last_rows, last_at = chunks[-1]
            last_ts.extend(ts)
            last_rows.extend(rows)
            last_at.extend([now] * len(ts))
        else:
            chunks.append((list(ts), list(rows), [now] * len(ts)))
        cell.dirty = True

    def _write(self, cell: _Cell) -> None:
        sink = self._sink
        frames = []
        for ts, rows, at in cell.chunks:
            if isinstance(rows, pl.DataFrame):
                frames.append(rows)
                continue
            values = rows.frame(sink.feature_names) if isinstance(rows, RowValues) else pl.DataFrame(  # by column: 3x
                [pl.Series(name, column, pl.Float64)  # faster than from rows
                 for name, column in zip(sink.feature_names, zip(*rows, strict=True), strict=True)])
            frames.append(values.select(
                pl.lit(self._symbol).alias("symbol"),
                pl.Series("ts", ts, pl.Int64).cast(pl.Datetime("ms")).dt.replace_time_zone("UTC").cast(TS_DTYPE),
                *sink.feature_names,
                (pl.lit(pl.Series(at, dtype=pl.Int64)) if isinstance(at, list) else pl.lit(at, pl.Int64))
                .mul(1000).cast(_CREATED).alias("created_at"),
                pl.lit(sink.view.version).alias("view_version")))
        frame = pl.concat(frames)
        if len(frames) > 1 and isinstance(cell.chunks[0][1], pl.DataFrame):  # a stored part: its rows stay first
            frame = frame.unique("ts", keep="first", maintain_order=True).sort("ts")
        write_parquet_atomic(frame.drop("symbol"), sink.part_path(self._symbol, cell.index), compression="snappy")
        cell.dirty = False

    def snapshot(self) -> _Cell | None:
        return None if self._cell is None else self._cell.copy()

    def close(self) -> None:
        if self._cell is not None and self._cell.dirty:
            self._write(self._cell)
