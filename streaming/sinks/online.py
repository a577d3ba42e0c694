"""Sink: each symbol's newest row into the online store.

Every worker writes the symbols it computes through its own connection, one write per batch of items
(Redis: one round trip). The store's upsert never moves a row back in time and rewrites a same-time row
with itself, so rows replayed after a restart leave it unchanged: the sink is idempotent and needs no
recovery state. Where the store expires rows (Redis), the view's rows live its TTL (one timeframe, unless
the store's URL says otherwise) after each write.
"""

from __future__ import annotations

from bytewax.outputs import DynamicSink, StatelessSinkPartition

from featurestore.definitions import FeatureView
from featurestore.durations import parse_ttl
from featurestore.online import OnlineRow, OnlineStore, connect
from streaming.clock import Clock, to_datetime
from streaming.items import FeatureRows

__all__ = ["OnlineSink"]


class OnlineSink(DynamicSink[tuple[str, FeatureRows]]):
    """Upsert the last row of each symbol's items into the online store at ``url``."""

    def __init__(self, url: str, view: FeatureView, feature_names: list[str], clock: Clock) -> None:
        self.url, self.view, self.feature_names, self.clock = url, view, feature_names, clock

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _OnlinePartition:
        return _OnlinePartition(self, connect(self.url, ttl=parse_ttl(None, [self.view])))


class _OnlinePartition(StatelessSinkPartition[tuple[str, FeatureRows]]):
    def __init__(self, sink: OnlineSink, online: OnlineStore) -> None:
        self._sink, self._online = sink, online

    def write_batch(self, items: list[tuple[str, FeatureRows]]) -> None:
        newest = {rows.symbol: (rows.ts[-1], rows.values[-1]) for _, rows in items if len(rows)}
        if not newest:
            return
        sink, now = self._sink, to_datetime(self._sink.clock())
        self._online.put_many(
            OnlineRow(sink.view.name, symbol, to_datetime(ts), sink.view.version,
                      dict(zip(sink.feature_names, values, strict=True)), now)
            for symbol, (ts, values) in newest.items())

    def close(self) -> None:
        self._online.close()
