"""The main job, end to end on the embedded default (synthetic market, local files, no servers).

Each stage prints what it did; a failed stage raises, so the command exits non-zero. Re-running is
idempotent: stored data is reused and nothing is duplicated.
"""

from __future__ import annotations

import time
from datetime import datetime

import polars as pl

from featurestore.ingest import ingest_synthetic
from featurestore.sql import run_sql
from featurestore.store import Store
from featurestore.validate import validate_store

__all__ = ["run_demo"]

SAMPLE_QUERY = """
SELECT symbol, count(*) AS bars, min(ts) AS first_bar, max(ts) AS last_bar,
       round(avg(close), 4) AS avg_close, round(sum(volume * close) / 1e9, 3) AS notional_bn
FROM bars GROUP BY symbol ORDER BY symbol
"""


def _stage(title: str) -> None:
    print(f"\n== {title}", flush=True)


def run_demo(store: Store, *, now: datetime, symbols: list[str], timeframe: str, since: datetime,
             until: datetime, seed: int) -> int:
    """Generate, store, validate and query the synthetic market; return the exit code."""
    _stage(f"ingest: synthetic market, {len(symbols)} symbols x {timeframe} bars, {since:%Y-%m-%d} to {until:%Y-%m-%d}")
    started = time.perf_counter()
    new_rows = ingest_synthetic(store, symbols, timeframe, since=since, until=until, now=now, seed=seed)
    elapsed = time.perf_counter() - started
    total = sum(new_rows.values())
    print(f"stored {total:,} new bars in {elapsed:.1f} s into {store.root}" + (
        f" ({total / elapsed:,.0f} bars/s)" if total else " (already stored: nothing to do)"))

    _stage("validate: bar rules and gaps")
    report = validate_store(store, symbols=symbols)
    with pl.Config(tbl_rows=50, tbl_hide_dataframe_shape=True, tbl_width_chars=160):
        print(report.summary)
    print(f"{report.gaps.height} gap(s), {len(report.problems)} broken rule(s)")
    if report.problems:
        raise SystemExit("\n".join(report.problems))

    _stage(f"sql: {' '.join(SAMPLE_QUERY.split())}")
    with pl.Config(tbl_rows=50, tbl_hide_dataframe_shape=True, tbl_width_chars=160):
        print(run_sql(SAMPLE_QUERY, store))
    print(f"\nquery it yourself: featurestore sql \"SELECT ...\" --store {store.root}"
          f"  (or: duckdb {store.catalog_path})")
    return 0
