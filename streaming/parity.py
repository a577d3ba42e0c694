"""Online/offline parity: streamed feature rows against the offline store, feature by feature.

``compare_rows`` matches rows on ``(symbol, ts)`` and reports, per feature, how many values differ,
the largest absolute and relative difference, and null mismatches (null on one side only). NaN
equals NaN. Parity fails on any row present on one side only, any null mismatch, or any relative
difference above ``tolerance`` (1e-12, ``docs/parity.md``; bit-identical is what the
engine delivers). ``replay_parity`` produces the streamed side by replaying stored bars through the
incremental engine, its state warmed on the bars before ``start``.

>>> import polars as pl
>>> a = pl.DataFrame({"symbol": ["X", "X"], "ts": [1, 2], "f": [1.0, None]})
>>> report = compare_rows(a, a.with_columns(f=pl.Series([1.0 + 1e-9, None])), ["f"])
>>> report.ok, report.table.select("feature", "differing", "null_mismatches", "status").rows()
(False, [('f', 1, 0, 'FAIL')])
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import polars as pl

from featurestore.bars import BAR_COLUMNS
from featurestore.definitions import FeatureView
from featurestore.offline import read_features
from featurestore.store import Store
from featurestore.timeframes import timeframe_ms
from streaming.engine import ViewEngine

__all__ = ["TOLERANCE", "ParityReport", "compare_rows", "replay_parity"]

TOLERANCE = 1e-12


@dataclass(frozen=True)
class ParityReport:
    """Rows compared, rows found on one side only, and the per-feature table."""

    rows: int
    only_streamed: int
    only_offline: int
    table: pl.DataFrame  # feature, compared, differing, null_mismatches, max_abs_diff, max_rel_diff, status

    @property
    def ok(self) -> bool:
        return not self.only_streamed and not self.only_offline and (self.table["status"] == "ok").all()

    def summary(self) -> str:
        failed = self.table.filter(pl.col("status") != "ok")["feature"].to_list()
        verdict = "PARITY OK" if self.ok else "PARITY MISMATCH"
        return (f"{verdict}: {self.rows:,} rows compared, {self.only_streamed:,} only streamed, "
                f"{self.only_offline:,} only offline" + (f"; failing features: {', '.join(failed)}" if failed else ""))


def compare_rows(streamed: pl.DataFrame, offline: pl.DataFrame, features: list[str], *,
                 tolerance: float = TOLERANCE) -> ParityReport:
    """Compare two frames of ``symbol``, ``ts``, features on ``(symbol, ts)``."""
    left = streamed.select("symbol", "ts", *features).with_columns(_streamed=pl.lit(True))
    right = offline.select("symbol", "ts", *features).with_columns(_offline=pl.lit(True))
    joined = left.join(right, on=["symbol", "ts"], how="full", coalesce=True, suffix="_offline")
    both = joined.filter(pl.col("_streamed") & pl.col("_offline"))
    stats = []
    for name in features:
        a, b = pl.col(name), pl.col(f"{name}_offline")
        present = a.is_not_null() & b.is_not_null()
        differs = present & (a != b) & ~(a.is_nan() & b.is_nan())
        abs_diff = pl.when(differs).then((a - b).abs().fill_nan(float("inf"))).otherwise(0.0)
        rel_diff = pl.when(differs).then(
            (abs_diff / pl.max_horizontal(a.abs(), b.abs())).fill_nan(float("inf"))).otherwise(0.0)
        stats.append(both.select(
            pl.lit(name).alias("feature"), present.sum().alias("compared"), differs.sum().alias("differing"),
            (a.is_null() != b.is_null()).sum().alias("null_mismatches"),
            abs_diff.max().fill_null(0.0).alias("max_abs_diff"), rel_diff.max().fill_null(0.0).alias("max_rel_diff")))
    table = pl.concat(stats).with_columns(
        status=pl.when((pl.col("null_mismatches") > 0) | (pl.col("max_rel_diff") > tolerance))
        .then(pl.lit("FAIL")).otherwise(pl.lit("ok")))
    return ParityReport(both.height, joined["_offline"].is_null().sum(), joined["_streamed"].is_null().sum(), table)


def replay_parity(store: Store, view: FeatureView, *, symbols: list[str] | None = None, exchange: str | None = None,
                  start: datetime | None = None, batch: int = 1000) -> ParityReport:
    """Replay the stored bars with ``ts >= start`` through the engine (warmed on the bars before, fed
    ``batch`` bars at a time) and compare the rows with the offline store's rows of the same times."""
    exchange = store.resolve_exchange(view.timeframe, exchange)
    chosen = symbols or [s.symbol for s in store.series(exchange=exchange, timeframe=view.timeframe)]
    engine = ViewEngine(view)
    streamed = []
    for symbol in chosen:
        bars = store.scan_bars(exchange, view.timeframe, [symbol]).select(BAR_COLUMNS).collect()
        state = engine.new_state()
        if start is not None:
            for chunk in bars.filter(pl.col("ts") < start).iter_slices(200_000):
                engine.update_batch(state, chunk)
            bars = bars.filter(pl.col("ts") >= start)
        streamed.extend(engine.update_batch(state, chunk) for chunk in bars.iter_slices(batch))
    offline = read_features(store, view, symbols=chosen).collect()
    if start is not None:
        offline = offline.filter(pl.col("ts") >= start + pl.duration(milliseconds=timeframe_ms(view.timeframe)))
    rows = pl.concat(streamed) if streamed else offline.clear().select("symbol", "ts", *view.feature_names)
    return compare_rows(rows, offline, view.feature_names)
