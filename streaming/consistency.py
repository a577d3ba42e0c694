"""Consistency over time, as Chronon measures it: the rows a flow served (its row log) against the same rows
recomputed from the offline store after the fact.

``featurestore parity`` replays stored bars through the engine now; this compares what a running flow
actually logged (``streaming.sinks.offline_parts``: every row it computed, the online store got the newest
of each item) with what the backfill's code computes from the bars stored today, late bars and corrections
included. Per feature: the share of rows present on both sides that match bit for bit (null equals null,
0.0 is not -0.0), and the first mismatches; per row: served but never backfilled (no stored bar behind
it) and backfilled but never served (a bar the flow missed or dropped as late), within the window.

The window is ``start <= ts < end`` of row times; by default from the first row logged to the last one.

>>> import polars as pl
>>> from datetime import datetime, timezone
>>> t = [datetime(2024, 5, 1, h, tzinfo=timezone.utc) for h in range(3)]
>>> served = pl.DataFrame({"symbol": ["X"] * 3, "ts": t, "a": [1.0, None, 0.0]})
>>> offline = pl.DataFrame({"symbol": ["X"] * 3, "ts": t, "a": [1.0, None, -0.0]})
>>> [(c.feature, c.compared, c.matching) for c in compare_bits(served, offline, ["a"])[0]]
[('a', 3, 2)]
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import polars as pl

from featurestore.definitions import FeatureView
from featurestore.errors import FeatureStoreError
from featurestore.store import BarSeries, Store
from streaming.sinks.offline_parts import scan_parts
from training.codec import decode, encode

__all__ = ["ConsistencyReport", "FeatureConsistency", "Mismatch", "compare_bits", "consistency"]

SHOWN = 10  # mismatches and one-sided rows listed in a report


@dataclass(frozen=True)
class Mismatch:
    """One value served that the offline store computes otherwise."""

    symbol: str
    ts: datetime
    feature: str
    served: float | None
    offline: float | None


@dataclass(frozen=True)
class FeatureConsistency:
    """One feature: rows on both sides, how many match bit for bit, their share (None: no row compared)."""

    feature: str
    compared: int
    matching: int
    share: float | None


@dataclass(frozen=True)
class RowKey:
    symbol: str
    ts: datetime


@dataclass(frozen=True)
class ConsistencyReport:
    """``featurestore consistency``'s result, written as JSON to ``<store>/monitor/consistency-<view>.json``."""

    view: str
    version: str
    exchange: str
    generated_at: datetime
    start: datetime
    end: datetime | None  # None: to the last row logged
    symbols: tuple[str, ...]
    served: int  # rows logged in the window
    recomputed: int  # rows the offline store gives in the window
    compared: int  # rows on both sides
    only_served: int  # served, never backfilled
    only_offline: int  # backfilled, never served
    features: tuple[FeatureConsistency, ...]
    mismatches: tuple[Mismatch, ...]  # the first ``SHOWN`` by time
    first_only_served: tuple[RowKey, ...]
    first_only_offline: tuple[RowKey, ...]

    @property
    def ok(self) -> bool:
        return not self.only_served and not self.only_offline and all(
            f.matching == f.compared for f in self.features)

    def summary(self) -> str:
        matching = sum(f.matching for f in self.features)
        values = sum(f.compared for f in self.features)
        return (f"{'CONSISTENT' if self.ok else 'INCONSISTENT'}: view {self.view} v{self.version}, {self.served:,} rows "
                f"served, {self.compared:,} recomputed from the offline store, {matching:,} of {values:,} values "
                f"bit for bit; {self.only_served:,} served but never backfilled, {self.only_offline:,} backfilled "
                f"but never served")

    def to_json(self) -> str:
        return json.dumps(encode(self), indent=1, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> ConsistencyReport:
        return decode(cls, json.loads(text), "", error=FeatureStoreError, schema="a consistency report")


def compare_bits(served: pl.DataFrame, offline: pl.DataFrame, features: list[str]
                 ) -> tuple[list[FeatureConsistency], list[Mismatch], pl.DataFrame]:
    """Per feature, rows of both frames (``symbol``, ``ts``, features) matched on ``(symbol, ts)`` and compared
    bit for bit; the first ``SHOWN`` mismatches by time; the joined frame (``_served``/``_offline`` flags)."""
    left = served.select("symbol", "ts", *features).with_columns(_served=pl.lit(True))
    right = offline.select("symbol", "ts", *features).with_columns(_offline=pl.lit(True))
    joined = left.join(right, on=["symbol", "ts"], how="full", coalesce=True, suffix="__offline")
    both = joined.filter(pl.col("_served") & pl.col("_offline")).sort("ts", "symbol")
    stats, mismatches = [], []
    for name in features:
        a, b = both[name], both[f"{name}__offline"]
        a_null, b_null = a.is_null().to_numpy(), b.is_null().to_numpy()
        bits = a.fill_null(0.0).to_numpy().view(np.int64) == b.fill_null(0.0).to_numpy().view(np.int64)
        match = (a_null & b_null) | (~a_null & ~b_null & bits)
        stats.append(FeatureConsistency(name, both.height, int(match.sum()),
                                        float(match.mean()) if both.height else None))
        for i in np.flatnonzero(~match)[:SHOWN]:
            mismatches.append(Mismatch(both["symbol"][int(i)], both["ts"][int(i)], name, a[int(i)], b[int(i)]))
    mismatches.sort(key=lambda m: (m.ts, m.symbol, features.index(m.feature)))
    return stats, mismatches[:SHOWN], joined


def _served(store: Store, view: FeatureView, exchange: str, symbols: list[str] | None) -> pl.DataFrame:
    """The logged rows of ``exchange`` (each row once: the first logged), sorted by symbol and time."""
    rows = scan_parts(store, view, exchange)
    if not rows.collect_schema():
        raise FeatureStoreError(f"no rows logged for view {view.name!r} version {view.version} on {exchange}: run "
                                f"`featurestore stream --view {view.name}` (the row log is on unless --no-offline-parts)")
    if symbols is not None:
        rows = rows.filter(pl.col("symbol").is_in(symbols))
    return rows.sort("symbol", "ts", "created_at").unique(["symbol", "ts"], keep="first").sort("symbol", "ts").collect()


def consistency(store: Store, view: FeatureView, *, now: datetime, exchange: str | None = None,
                symbols: list[str] | None = None, start: datetime | None = None,
                end: datetime | None = None) -> ConsistencyReport:
    """Compare the view's logged rows in ``start <= ts < end`` with the rows recomputed from the stored bars."""
    exchange = store.resolve_exchange(view.timeframe, exchange)
    served = _served(store, view, exchange, symbols)
    start = start or served["ts"].min()
    window = (pl.col("ts") >= start) & (pl.lit(True) if end is None else pl.col("ts") < end)
    served = served.filter(window)
    chosen = symbols or served["symbol"].unique().sort().to_list()
    stored = {s.symbol for s in store.series(exchange=exchange, timeframe=view.timeframe)}
    recomputed = pl.concat([view.compute_symbol(store.scan_series(BarSeries(exchange, view.timeframe, symbol)))
                            .filter(window) for symbol in chosen if symbol in stored]
                           or [served.clear().select("symbol", "ts", *view.feature_names)])
    features, mismatches, joined = compare_bits(served, recomputed, view.feature_names)
    only_served = joined.filter(pl.col("_offline").is_null()).sort("ts", "symbol")
    only_offline = joined.filter(pl.col("_served").is_null()).sort("ts", "symbol")
    return ConsistencyReport(
        view.name, view.version, exchange, now, start, end, tuple(chosen), served.height, recomputed.height,
        features[0].compared if features else 0, only_served.height, only_offline.height, tuple(features),
        tuple(mismatches), *(tuple(RowKey(s, t) for s, t in frame.head(SHOWN).select("symbol", "ts").rows())
                             for frame in (only_served, only_offline)))
