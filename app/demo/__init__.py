"""The main job, end to end on the embedded default (synthetic market, local files, no servers):
ingest -> validate -> SQL -> resample -> backfill the built-in views -> SQL over features -> train -> stream with
the model + parity + consistency -> score -> monitor.

The synthetic market switches regime (``regime``: volatility and drift) ``REGIME_DAYS`` days before its end:
the model is trained on the rows before the switch, the flow streams the days after it and scores every row,
and ``monitor`` raises the drift the switch caused (the stage fails if it does not).

Each stage prints what it did; a failed stage raises, so the command exits non-zero. Re-running is
idempotent: stored data is reused and nothing is duplicated.
"""

from __future__ import annotations

import time
from datetime import datetime

import polars as pl

from featurestore.backfill import backfill
from featurestore.builtin_views import BUILTIN_VIEWS
from featurestore.ingest import ingest_resampled, ingest_synthetic
from featurestore.sources.synthetic import Regime
from featurestore.sql import run_sql
from featurestore.store import Store
from featurestore.validate import validate_store

__all__ = ["REGIME_DAYS", "run_demo"]

#: The market switches regime this many days before the demo's end: the days streamed and monitored.
REGIME_DAYS = 2

FEATURES_QUERY = """
SELECT r.symbol, r.ts, round(r.ret_1, 6) AS ret_1, round(r.rv_24, 6) AS rv_24, round(r.close_ema_48_ratio, 6)
       AS close_ema_48_ratio, round(i.rsi_14, 2) AS rsi_14, round(i.macd_hist, 4) AS macd_hist,
       round(i.bb_pctb, 3) AS bb_pctb
FROM features_research r JOIN features_indicators i USING (symbol, ts)
WHERE r.ts = (SELECT max(ts) FROM features_research) ORDER BY r.symbol
"""

SAMPLE_QUERY = """
SELECT symbol, count(*) AS bars, min(ts) AS first_bar, max(ts) AS last_bar,
       round(avg(close), 4) AS avg_close, round(sum(volume * close) / 1e9, 3) AS notional_bn
FROM bars GROUP BY symbol ORDER BY symbol
"""


def _stage(title: str) -> None:
    print(f"\n== {title}", flush=True)


def run_demo(store: Store, *, now: datetime, symbols: list[str], since: datetime, until: datetime, seed: int,
             regime: Regime) -> int:
    """Generate, store, validate and query the synthetic market, compute features, train, stream, score and
    monitor; return the exit code.

    The market is 1-minute bars: the timeframe of the built-in intraday views.
    """
    timeframe = "1m"
    _stage(f"ingest: synthetic market, {len(symbols)} symbols x {timeframe} bars, {since:%Y-%m-%d} to {until:%Y-%m-%d}, "
           f"regime switch at {regime.at:%Y-%m-%d %H:%M} (volatility x{regime.volatility:g}, drift "
           f"{regime.drift:+g} a day)")
    started = time.perf_counter()
    new_rows = ingest_synthetic(store, symbols, timeframe, since=since, until=until, now=now, seed=seed, regime=regime)
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

    _stage("resample: daily bars from the 1-minute bars (source of the daily_trend view)")
    new_daily = ingest_resampled(store, exchange="synthetic", from_timeframe=timeframe, timeframe="1d", now=now,
                                 symbols=symbols)
    print(f"stored {sum(new_daily.values()):,} new daily bars")

    for view in BUILTIN_VIEWS:
        _stage(f"backfill: view {view.name} v{view.version} ({len(view.features)} features, {view.timeframe} bars)")
        started = time.perf_counter()
        result = backfill(store, view, now=now, symbols=symbols, exchange="synthetic", progress=False)
        elapsed = time.perf_counter() - started
        print(f"{sum(result.rows_written.values()):,} rows written, {result.bars_read:,} bars read in {elapsed:.1f} s "
              f"({result.bars_read / elapsed:,.0f} bar-rows/s)")

    _stage(f"sql: {' '.join(FEATURES_QUERY.split())}")
    with pl.Config(tbl_rows=50, tbl_cols=12, tbl_hide_dataframe_shape=True, tbl_width_chars=160):
        print(run_sql(FEATURES_QUERY, store))

    _stage("train: LightGBM on research before the regime switch, walk-forward evaluation, ONNX export, registry")
    from app.demo.training_stage import (
        run_training_stage,  # imports LightGBM and onnxruntime: only when needed
    )

    model = run_training_stage(store, now=now, symbols=symbols, end=regime.at)

    from app.demo.serving_stage import demo_signing_key
    from app.demo.streaming_stage import run_streaming_stage  # imports Bytewax and numba: only when needed

    with demo_signing_key():
        run_streaming_stage(store, now=now, symbols=symbols, start=regime.at, model=model)

        _stage("score: every symbol once through the ONNX scorer, skew guard on, signed signals")
        from app.demo.serving_stage import run_serving_stage

        run_serving_stage(store, now=now, symbols=symbols)

    from app.demo.monitor_stage import run_monitor_stage

    run_monitor_stage(store, now=now, regime=regime)
    print(f"\nquery it yourself: featurestore sql \"SELECT ...\" --store {store.root}  (or DuckDB's own API, from "
          f"the store directory: cd {store.root} && python -c \"import duckdb; "
          f"print(duckdb.connect('catalog.duckdb', read_only=True).sql('FROM bars LIMIT 5'))\")")
    return 0
