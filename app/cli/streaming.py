"""The ``stream`` and ``parity`` commands: the Bytewax dataflow, and its parity with the backfill.

    featurestore stream --source replay --view research [--symbols ..] [--start 2024-05-01] [--speed 0]
                        [--batch 1000] [--recovery-dir DIR] [--workers N] [--jsonl FILE] [--no-offline-parts] [--no-store-bars]
    featurestore stream --source ccxt --exchange binance --view research --symbols BTC/USDT
    featurestore stream ... --process-id 0 --addresses "host0:2101;host1:2101"     (one per machine)
    featurestore stream --view research --model NAME [--audit FILE]     every row scored: signed signals
    featurestore parity --view research [--symbols ..] [--start ..]
"""

from __future__ import annotations

import argparse
import time

import polars as pl

from app.cli.options import (
    add_cluster_options,
    add_definitions,
    add_symbols,
    add_time_range,
    add_views,
    count,
    directory,
    number,
    output_file,
)
from app.cli.serving import model_options, signal_options
from app.sdk import FeatureStore

__all__ = ["add_commands"]


def cmd_stream(args: argparse.Namespace, fs: FeatureStore) -> int:
    from streaming.sinks import read_metrics, summary_line

    if args.definitions is not None:
        fs.apply(args.definitions)
    view = fs.view(args.view)
    print(f"streaming view {view.name} v{view.version} from {args.source}"
          + (f" for {len(args.symbols)} symbol(s): {', '.join(args.symbols)}" if args.symbols else ""), flush=True)
    started = time.perf_counter()
    signals = signal_options(args) if args.model else {}
    config = fs.stream(args.view, source=args.source, symbols=args.symbols, exchange=args.exchange, start=args.start,
                       end=args.end, batch=args.batch, speed=args.speed, poll_interval_s=args.poll_interval,
                       jsonl=args.jsonl, offline_parts=args.offline_parts, store_bars=args.store_bars,
                       metrics=args.metrics, model=args.model,
                       workers=args.workers, process_id=args.process_id, addresses=args.addresses,
                       join_timeout_s=args.join_timeout, recovery_dir=args.recovery_dir,
                       snapshot_interval_s=args.snapshot_interval, backup_interval_s=args.backup_interval,
                       progress=True, **signals)
    elapsed = time.perf_counter() - started
    if config.metrics_path.exists():  # in a cluster, only the process that ran the metrics sink has it
        print(f"{summary_line(read_metrics(config.metrics_path))} ({config.metrics_path})")
    print(f"done in {elapsed:.1f} s; online store: {fs.store.online_url}"
          + (f"; rows: {config.jsonl}" if config.jsonl else ""))
    return 0


def cmd_parity(args: argparse.Namespace, fs: FeatureStore) -> int:
    if args.definitions is not None:
        fs.apply(args.definitions)
    view = fs.view(args.view)
    report = fs.parity(args.view, symbols=args.symbols, start=args.start, exchange=args.exchange, batch=args.batch)
    with pl.Config(tbl_rows=100, tbl_hide_dataframe_shape=True, tbl_width_chars=160, float_precision=None):
        print(f"parity of view {view.name} v{view.version}: engine replay vs offline store")
        print(report.table)
    print(report.summary())
    return 0 if report.ok else 1


def add_commands(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Register ``stream`` and ``parity``."""
    stream = commands.add_parser("stream", parents=[common], help="run the streaming dataflow (replay or live)")
    stream.add_argument("--source", choices=["replay", "ccxt"], default="replay",
                        help="stored bars replayed, or live closed bars from a ccxt exchange")
    add_views(stream, several=False)
    add_symbols(stream, help="comma-separated (replay default: every stored symbol)")
    stream.add_argument("--exchange", help="replay: the stored series' exchange; ccxt: exchange id (default binance)")
    add_definitions(stream)
    add_time_range(stream, "replay bars opening at or after this time (state warmed on the bars before); ccxt: start "
                   "here instead of after the newest stored bar", "stop before bars opening at this time")
    stream.add_argument("--speed", type=number(at_least=0), default=0.0,
                        help="replay pacing: market seconds per wall second (0 = as fast as possible)")
    stream.add_argument("--batch", type=count(1), default=1000, help="replay window in bars (1 = bar by bar)")
    stream.add_argument("--poll-interval", type=number(above=0), default=5.0, help="ccxt: seconds between polls at most")
    stream.add_argument("--jsonl", type=output_file, help="also write every row to this JSON-lines file")
    stream.add_argument("--offline-parts", action=argparse.BooleanOptionalAction, default=True,
                        help="log every row as parquet parts under <store>/kind=stream/ (the row log `featurestore "
                        "consistency` checks; default on)")
    stream.add_argument("--store-bars", action=argparse.BooleanOptionalAction, default=True,
                        help="ccxt: append the bars received to the bar store, so a backfill, parity and a restart "
                        "read them without an ingest (default on)")
    stream.add_argument("--metrics", type=output_file, help="counters JSON (default <store>/stream/metrics-<view>.json)")
    stream.add_argument("--recovery-dir", type=directory, help="enable Bytewax recovery with this directory")
    stream.add_argument("--snapshot-interval", type=number(above=0), default=10.0, help="seconds between recovery snapshots")
    stream.add_argument("--backup-interval", type=number(at_least=0), default=0.0, help="seconds to keep old snapshots")
    add_cluster_options(stream)
    model_options(stream)  # --model: score every row, signed signals to the audit log
    stream.set_defaults(run=cmd_stream)

    parity = commands.add_parser("parity", parents=[common],
                                 help="replay stored bars through the engine and compare with the offline store")
    add_views(parity, several=False)
    add_symbols(parity)
    add_time_range(parity, "replay from here (engine warmed before)")
    parity.add_argument("--exchange", help="default: the only exchange with bars of the view's timeframe")
    parity.add_argument("--batch", type=count(1), default=1000, help="bars per engine batch")
    add_definitions(parity)
    parity.set_defaults(run=cmd_parity)
