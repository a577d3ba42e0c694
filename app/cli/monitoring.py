"""The ``monitor`` and ``consistency`` commands: a model's drift, freshness and live performance; the rows a
flow served against the offline store.

    featurestore monitor --model NAME [--window 1d] [--end T] [--source auto|signals|offline] [--json FILE]
    featurestore consistency --view research [--start ..] [--end ..] [--symbols ..] [--json FILE]

``monitor`` exits 0 when no check is ALERT (WARN included) and 3 on ALERT, so a scheduler can act on it
(1 stays a user error, as everywhere). ``consistency`` exits 0 when every row matches bit for bit and none
is on one side only, else 1 (as ``parity``). Both write their report as JSON under ``<store>/monitor/``.
"""

from __future__ import annotations

import argparse
from datetime import timedelta
from pathlib import Path

import polars as pl

from app.cli.options import add_symbols, add_time_range, add_views, directory, duration, output_file, utc
from app.sdk import FeatureStore
from featurestore.atomic import write_bytes_atomic

__all__ = ["ALERT_EXIT", "add_commands"]

ALERT_EXIT = 3


def cmd_monitor(args: argparse.Namespace, fs: FeatureStore) -> int:
    report = fs.monitor(args.model, version=args.version, window=args.window, end=args.end, source=args.source,
                        symbols=args.symbols, audit=args.audit, models_dir=args.models)
    print(report.table())
    if args.json is not None:
        write_bytes_atomic(report.to_json().encode(), args.json)
    print(f"report: {fs.store.monitor_report_path(report.model)}" + (f" and {args.json}" if args.json else ""))
    return ALERT_EXIT if report.status == "ALERT" else 0


def cmd_consistency(args: argparse.Namespace, fs: FeatureStore) -> int:
    report = fs.consistency(args.view, start=args.start, end=args.end, symbols=args.symbols, exchange=args.exchange)
    table = pl.DataFrame([{"feature": f.feature, "compared": f.compared, "matching": f.matching,
                           "share": f.share} for f in report.features])
    with pl.Config(tbl_rows=100, tbl_hide_dataframe_shape=True, tbl_width_chars=160, float_precision=6):
        print(f"consistency of view {report.view} v{report.version}: rows logged by the dataflow vs recomputed from "
              f"the offline store, {report.start.isoformat()} .. {report.end.isoformat() if report.end else 'the last row'}")
        print(table)
        for m in report.mismatches:
            print(f"  mismatch {m.symbol} {m.ts.isoformat()} {m.feature}: served {m.served!r}, offline {m.offline!r}")
        for title, keys in (("served, never backfilled", report.first_only_served),
                            ("backfilled, never served", report.first_only_offline)):
            for key in keys:
                print(f"  {title}: {key.symbol} {key.ts.isoformat()}")
    print(report.summary())
    if args.json is not None:
        write_bytes_atomic(report.to_json().encode(), args.json)
    return 0 if report.ok else 1


def add_commands(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Register ``monitor`` and ``consistency``."""
    monitor = commands.add_parser("monitor", parents=[common],
                                  help="a model's drift, freshness and live performance; exit 3 on ALERT")
    monitor.add_argument("--model", help="registry name (its production version) or a model directory "
                         "(default: the only production model)")
    monitor.add_argument("--version", help="a registry version instead of production")
    monitor.add_argument("--models", type=directory, help="models directory (default <store>/models)")
    monitor.add_argument("--window", type=duration, default=timedelta(days=1), help="how far back from --end "
                         "(e.g. 6h, 1d; default 1d)")
    monitor.add_argument("--end", type=utc, help="end of the window (default: now)")
    monitor.add_argument("--source", choices=["auto", "signals", "offline"], default="auto",
                         help="rows served (the audit log's signals), or the offline store's rows of the window "
                         "scored; auto: signals when the window has any")
    add_symbols(monitor, help="comma-separated (default: the symbols served in the window, else the training set's)")
    monitor.add_argument("--audit", type=Path, help="audit log (default <store>/signals/signals.jsonl, else replay.jsonl)")
    monitor.add_argument("--json", type=output_file, help="also write the report to this file")
    monitor.set_defaults(run=cmd_monitor)

    consistency = commands.add_parser("consistency", parents=[common], help="rows the dataflow served against the "
                                      "same rows recomputed from the offline store, bit for bit")
    add_views(consistency, several=False)
    add_time_range(consistency, "first row time (default: the first row logged)",
                   "stop before this row time (default: after the last row logged)")
    add_symbols(consistency, help="comma-separated (default: every symbol logged)")
    consistency.add_argument("--exchange", help="default: the only exchange with bars of the view's timeframe")
    consistency.add_argument("--json", type=output_file, help="also write the report to this file")
    consistency.set_defaults(run=cmd_consistency)
