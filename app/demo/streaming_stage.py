"""The demo's streaming stage: replay the stored bars from the regime switch on through the real dataflow,
the demo model scoring every row into a signed signal.

The feature state of each symbol is warmed on every stored bar before the replay window, the rows go to the
online store, the row log (parquet parts under ``kind=stream/``) and a JSONL file
(``<store>/stream/demo-<view>.jsonl``); the streamed rows are then compared with the backfill's rows of the
same times, and the row log with the same rows recomputed from the offline store (``featurestore
consistency``): the stage raises on any mismatch.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from pathlib import Path

import polars as pl
from bytewax.testing import run_main

from featurestore.builtin_views import RESEARCH
from featurestore.definitions import FeatureView
from featurestore.errors import FeatureStoreError
from featurestore.offline import read_features
from featurestore.online import connect
from featurestore.store import Store
from featurestore.timeframes import timeframe_ms
from streaming.clock import fixed_clock
from streaming.consistency import consistency
from streaming.flow import StreamConfig, build_flow
from streaming.parity import compare_rows
from streaming.sinks import read_jsonl, read_metrics, summary_line

__all__ = ["run_streaming_stage"]


def run_streaming_stage(store: Store, *, now: datetime, symbols: list[str], start: datetime, model: Path,
                        view: FeatureView = RESEARCH, exchange: str | None = None) -> None:
    """Stream ``view``'s bars from ``start`` on for ``symbols``, each row scored by ``model``; check parity and
    consistency with the backfill."""
    exchange = store.resolve_exchange(view.timeframe, exchange)
    jsonl = store.root / "stream" / f"demo-{view.name}.jsonl"
    config = StreamConfig(store=str(store.root), view=view.name, symbols=symbols, exchange=exchange,
                          start=start.isoformat(), jsonl=str(jsonl), model=str(model))
    print(f"\n== stream: replay the {view.timeframe} bars from {start:%Y-%m-%d %H:%M} (the regime switch) of "
          f"{len(symbols)} symbols through the Bytewax dataflow, view {view.name} v{view.version}, every row scored "
          f"by {model.parent.name} {model.name} into a signed signal", flush=True)
    started = time.perf_counter()
    run_main(build_flow(config, clock=fixed_clock(now)))
    elapsed = time.perf_counter() - started
    metrics = read_metrics(config.metrics_path)
    print(f"{summary_line(metrics)} in {elapsed:.1f} s ({metrics['total']['received'] / elapsed:,.0f} bars/s, "
          "engine compile and warm-up included)")

    with connect(store.online_url, readonly=True) as online:
        rows = online.get_many(view.name, symbols)
    shown = view.feature_names[:4]
    with pl.Config(tbl_rows=50, tbl_hide_dataframe_shape=True, tbl_width_chars=160):
        print(pl.DataFrame([{"symbol": r.symbol, "ts": r.ts, **{n: r.features[n] for n in shown}}
                            for r in rows.values()]))

    streamed = read_jsonl(jsonl, view.feature_names)
    offline = read_features(store, view, symbols=symbols).filter(pl.col("ts") > start).collect()
    report = compare_rows(streamed, offline, view.feature_names)
    newest_rows = offline.sort("ts").group_by("symbol", maintain_order=True).last()
    online_frame = pl.DataFrame([{"symbol": r.symbol, "ts": r.ts, **r.features} for r in rows.values()],
                                schema=newest_rows.select("symbol", "ts", *view.feature_names).schema)
    online_report = compare_rows(online_frame, newest_rows, view.feature_names)
    online_equal = online_report.ok and online_report.rows == len(symbols)
    print(f"{report.summary()}; online store rows equal the newest backfilled rows: {online_equal}")
    if not report.ok or not online_equal:
        with pl.Config(tbl_rows=100, tbl_width_chars=160):
            print(report.table)
        raise FeatureStoreError("streaming output differs from the backfill (see the table above)")
    first_row = start + timedelta(milliseconds=timeframe_ms(view.timeframe))  # of the first bar streamed
    logged = consistency(store, view, now=now, exchange=exchange, symbols=symbols, start=first_row)
    print(f"row log (featurestore consistency --view {view.name}): {logged.summary()}")
    if not logged.ok:
        raise FeatureStoreError("the rows the flow logged differ from the offline store's")
