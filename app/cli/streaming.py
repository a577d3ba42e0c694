"""The ``stream``, ``parity`` and ``online`` commands of the ``featurestore`` CLI.

``app.cli.main`` calls ``add_commands(commands, common)``; Bytewax and ccxt are imported inside
the command functions only.

    featurestore stream --source replay --view research [--symbols ..] [--from 2024-05-01] [--speed 0]
                        [--batch 1000] [--recovery-dir DIR] [--workers N] [--jsonl FILE] [--offline-parts]
    featurestore stream --source ccxt --exchange binance --view research --symbols BTC/USDT
    featurestore stream ... --process-id 0 --addresses "host0:2101;host1:2101"     (one per machine)
    featurestore stream --view research --model NAME [--audit FILE]     every row scored: signed signals
    featurestore parity --view research [--symbols ..] [--from ..]
    featurestore online get --view research [--symbol BTC/USDT]
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import timedelta
from pathlib import Path

import polars as pl

from app.cli.options import comma_list, utc
from app.cli.serving import model_options
from app.sdk import FeatureStore
from featurestore.errors import FeatureStoreError
from featurestore.store import Store

__all__ = ["add_commands"]


def cmd_stream(args: argparse.Namespace, fs: FeatureStore) -> int:
    store, now = fs.store, fs.clock()
    from featurestore.registry import resolve_view
    from streaming.flow import StreamConfig, build_flow
    from streaming.runner import run_flow
    from streaming.sinks import read_metrics, summary_line

    view = resolve_view(store, args.view, args.definitions, now=now)
    symbols = args.symbols
    if symbols is None:
        if args.source == "ccxt":
            raise FeatureStoreError("--source ccxt needs --symbols, e.g. --symbols BTC/USDT,ETH/USDT")
        exchange = store.resolve_exchange(view.timeframe, args.exchange)
        symbols = [s.symbol for s in store.series(exchange=exchange, timeframe=view.timeframe)]
    config = StreamConfig(
        store=str(store.root), view=view.name, symbols=symbols, source=args.source, exchange=args.exchange,
        definitions=str(args.definitions) if args.definitions else None,
        start=args.start.isoformat() if args.start else None, until=args.until.isoformat() if args.until else None,
        batch=args.batch, speed=args.speed, poll_interval_s=args.poll_interval,
        jsonl=str(args.jsonl) if args.jsonl else None, offline_parts=args.offline_parts,
        metrics=str(args.metrics) if args.metrics else None, **_signal_config(args, store))
    print(f"streaming view {view.name} v{view.version} from {args.source} for {len(symbols)} symbol(s): "
          f"{', '.join(symbols)}", flush=True)
    started = time.perf_counter()
    run_flow(build_flow(config), workers=args.workers, process_id=args.process_id,
             addresses=args.addresses.split(";") if args.addresses else None, recovery_dir=args.recovery_dir,
             snapshot_interval_s=args.snapshot_interval, backup_interval_s=args.backup_interval)
    elapsed = time.perf_counter() - started
    if config.metrics_path.exists():  # in a cluster, only the process that ran the metrics sink has it
        print(f"{summary_line(read_metrics(config.metrics_path))} ({config.metrics_path})")
    print(f"done in {elapsed:.1f} s; online store: {store.online_url}"
          + (f"; rows: {config.jsonl}" if config.jsonl else ""))
    return 0


def _signal_config(args: argparse.Namespace, store: Store) -> dict:
    """The ``StreamConfig`` fields of ``--model`` and its options (none without ``--model``)."""
    from app.cli.serving import thresholds_from_args
    from serving.scorer import load_model, resolve_model_dir

    if args.model is None:
        return {}
    model_dir = resolve_model_dir(store, args.model, version=args.version, models=args.models)
    max_age = args.max_age
    if isinstance(max_age, timedelta):
        max_age = dict.fromkeys(load_model(model_dir).view_versions, max_age)
    thresholds = thresholds_from_args(args)
    return {"model": str(model_dir), "audit": str(args.audit) if args.audit else None,
            "thresholds": [thresholds.long_above, thresholds.short_below] if thresholds else None,
            "size": args.size, "max_age_s": {v: age.total_seconds() for v, age in max_age.items()} if max_age else None}


def cmd_parity(args: argparse.Namespace, fs: FeatureStore) -> int:
    store, now = fs.store, fs.clock()
    from featurestore.registry import resolve_view
    from streaming.parity import replay_parity

    view = resolve_view(store, args.view, args.definitions, now=now)
    report = replay_parity(store, view, symbols=args.symbols, exchange=args.exchange, start=args.start,
                           batch=args.batch)
    with pl.Config(tbl_rows=100, tbl_hide_dataframe_shape=True, tbl_width_chars=160, float_precision=None):
        print(f"parity of view {view.name} v{view.version}: engine replay vs offline store")
        print(report.table)
    print(report.summary())
    return 0 if report.ok else 1


def cmd_online(args: argparse.Namespace, fs: FeatureStore) -> int:
    store = fs.store
    from featurestore.online import connect

    with connect(store.online_url, readonly=True) as online:
        rows = list(online.get_many(args.view, args.symbol).values()) if args.symbol else online.rows(args.view)
    missing = sorted(set(args.symbol or []) - {row.symbol for row in rows})
    for row in rows:
        print(f"{row.view} {row.symbol}  ts {row.ts.isoformat()}  version {row.view_version}  "
              f"updated {row.updated_at.isoformat()}")
        for name, value in row.features.items():
            print(f"  {name:<24} {value!r}")
    if missing or not rows:
        print(f"error: no online row for view {args.view!r}"
              + (f" and symbol(s) {', '.join(missing)}" if missing else ""), file=sys.stderr)
        return 1
    return 0


def add_commands(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Register ``stream``, ``parity`` and ``online`` on the ``featurestore`` parser."""
    stream = commands.add_parser("stream", parents=[common], help="run the streaming dataflow (replay or live)")
    stream.add_argument("--source", choices=["replay", "ccxt"], default="replay")
    stream.add_argument("--view", required=True)
    stream.add_argument("--symbols", type=comma_list, help="comma-separated (replay default: every stored symbol)")
    stream.add_argument("--exchange", help="replay: the stored series' exchange; ccxt: exchange id (default binance)")
    stream.add_argument("--definitions", type=Path, help="a Python file defining FeatureView objects")
    stream.add_argument("--from", dest="start", type=utc,
                        help="replay bars opening at or after this time (state warmed on the bars before); "
                             "ccxt: start here instead of after the newest stored bar")
    stream.add_argument("--until", type=utc, help="stop before bars opening at this time")
    stream.add_argument("--speed", type=float, default=0.0,
                        help="replay pacing: market seconds per wall second (0 = as fast as possible)")
    stream.add_argument("--batch", type=int, default=1000, help="replay window in bars (1 = bar by bar)")
    stream.add_argument("--poll-interval", type=float, default=5.0, help="ccxt: seconds between polls at most")
    stream.add_argument("--jsonl", type=Path, help="also write every row to this JSON-lines file")
    stream.add_argument("--offline-parts", action="store_true",
                        help="also write rows as parquet parts under <store>/kind=stream/")
    stream.add_argument("--metrics", type=Path, help="counters JSON (default <store>/stream/metrics-<view>.json)")
    stream.add_argument("--recovery-dir", type=Path, help="enable Bytewax recovery with this directory")
    stream.add_argument("--snapshot-interval", type=float, default=10.0, help="seconds between recovery snapshots")
    stream.add_argument("--backup-interval", type=float, default=0.0, help="seconds to keep old snapshots")
    stream.add_argument("--workers", type=int, default=1, help="worker threads in this process")
    stream.add_argument("--process-id", type=int, help="cluster: this process's index in --addresses")
    stream.add_argument("--addresses", help='cluster: "host:port;host:port;..." of every process')
    model_options(stream)  # --model: score every row, signed signals to the audit log
    stream.set_defaults(run=cmd_stream)

    parity = commands.add_parser("parity", parents=[common],
                                 help="replay stored bars through the engine and compare with the offline store")
    parity.add_argument("--view", required=True)
    parity.add_argument("--symbols", type=comma_list, help="default: every stored symbol")
    parity.add_argument("--from", dest="start", type=utc, help="replay from here (engine warmed before)")
    parity.add_argument("--exchange", help="default: the only exchange with bars of the view's timeframe")
    parity.add_argument("--batch", type=int, default=1000, help="bars per engine batch")
    parity.add_argument("--definitions", type=Path, help="a Python file defining FeatureView objects")
    parity.set_defaults(run=cmd_parity)

    online = commands.add_parser("online", parents=[common], help="read the online store")
    online.add_argument("action", choices=["get"])
    online.add_argument("--view", required=True)
    online.add_argument("--symbol", action="append", help="repeatable; default: every symbol of the view")
    online.set_defaults(run=cmd_online)
