"""Re-check what is stored: every rule of the bar contract per series, plus the gaps and the bars recorded as
built from incomplete periods (``featurestore.partial_bars``).

>>> import tempfile
>>> from datetime import datetime, timezone
>>> from featurestore.ingest import ingest_synthetic
>>> store = Store(tempfile.mkdtemp())
>>> _ = ingest_synthetic(store, ["BTC/USDT"], "1h", since=datetime(2024, 1, 1, tzinfo=timezone.utc),
...                      until=datetime(2024, 1, 2, tzinfo=timezone.utc), now=datetime(2025, 1, 1, tzinfo=timezone.utc))
>>> report = validate_store(store)
>>> report.summary["rows"].to_list(), report.gaps.height, report.partial.height, report.problems
([24], 0, 0, [])
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from featurestore.bars import find_gaps, validate_bars
from featurestore.damaged import REPAIR, damaged_files
from featurestore.errors import DamagedFileError, FeatureStoreError
from featurestore.partial_bars import read_partial_bars
from featurestore.store import Store

__all__ = ["StoreReport", "validate_store"]


@dataclass(frozen=True)
class StoreReport:
    """``summary``: one row per readable series; ``gaps``: one row per gap; ``partial``: one row per bar built
    from an incomplete period; ``problems``: broken rules and damaged files (should be none)."""

    summary: pl.DataFrame
    gaps: pl.DataFrame
    partial: pl.DataFrame
    problems: list[str]


def validate_store(store: Store, *, symbols: list[str] | None = None) -> StoreReport:
    """Validate every stored series (optionally only ``symbols``) and list its gaps; a series with a damaged
    file is reported as a problem naming the file, and the others are still validated."""
    chosen = store.series(symbols=symbols)
    if not chosen:
        raise FeatureStoreError(f"no stored bars{' for ' + str(symbols) if symbols else ''} in {store.root}; "
                                "run `featurestore ingest` first")
    summaries, gaps, partial, problems = [], [], [], []
    for series in chosen:
        damaged = damaged_files(store.bar_files(series))
        if damaged:
            problems.extend(str(DamagedFileError(path, why, REPAIR)) for path, why in damaged.items())
            continue
        bars = store.scan_series(series).collect()
        try:
            validate_bars(bars, series.timeframe, source=f"{series.exchange} {series.timeframe}")
        except FeatureStoreError as exc:
            problems.append(str(exc))
        series_gaps = find_gaps(bars, series.timeframe)
        series_partial = read_partial_bars(store, series)
        partial.append(series_partial.select(pl.lit(series.exchange).alias("exchange"),
                                             pl.lit(series.timeframe).alias("timeframe"),
                                             pl.lit(series.symbol).alias("symbol"), pl.all()))
        gaps.append(series_gaps.select(pl.lit(series.exchange).alias("exchange"),
                                       pl.lit(series.timeframe).alias("timeframe"), pl.all()))
        summaries.append(bars.select(
            pl.lit(series.exchange).alias("exchange"), pl.lit(series.timeframe).alias("timeframe"),
            pl.lit(series.symbol).alias("symbol"), pl.len().alias("rows"),
            pl.col("ts").min().alias("first"), pl.col("ts").max().alias("last"),
            pl.lit(series_gaps.height).alias("gaps"),
            pl.lit(int(series_gaps["missing_bars"].sum() or 0)).alias("missing_bars"),
            pl.lit(series_partial.height).alias("partial"),
            pl.lit(sum(len(year.deltas) for year in store.year_files(series))).alias("delta_files"),
        ))
    if not summaries:  # every chosen series is damaged: the problems say which files
        return StoreReport(pl.DataFrame(), pl.DataFrame(), pl.DataFrame(), problems)
    return StoreReport(pl.concat(summaries), pl.concat(gaps), pl.concat(partial), problems)
