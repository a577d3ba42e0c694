"""The ``apply``, ``features`` and ``backfill`` commands: views registered, listed, shown and computed.

    featurestore apply [my_views.py] | --builtin research [--timeframe 1h]
    featurestore features list | show VIEW
    featurestore backfill --view research[,indicators] [--symbols ..] [--start ..] [--end ..]
    featurestore backfill --view research --workers 2 [--process-id 0 --addresses "host0:2101;host1:2101"]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from app.cli.options import (
    add_cluster_options,
    add_definitions,
    add_symbols,
    add_time_range,
    add_views,
    timeframe,
)
from app.sdk import FeatureStore
from featurestore.errors import FeatureStoreError

__all__ = ["add_commands"]


def _apply_definitions(args: argparse.Namespace, fs: FeatureStore) -> None:
    """``--definitions FILE``: an implicit ``apply`` before the command."""
    if getattr(args, "definitions", None) is not None:
        fs.apply(args.definitions)


def cmd_apply(args: argparse.Namespace, fs: FeatureStore) -> int:
    changes = fs.apply(args.module, builtin=args.builtin, timeframe=args.timeframe)
    for change in changes:
        print(f"{change.name:<20} v{change.version}  {change.action}" + (f" ({change.detail})" if change.detail else ""))
    print(f"applied {len(changes)} view(s) to {fs.root}")
    return 0


def cmd_features(args: argparse.Namespace, fs: FeatureStore) -> int:
    from featurestore.expressions import render
    from featurestore.registry import registered

    _apply_definitions(args, fs)
    if args.action == "list":
        print(f"{'view':<20} {'version':<17} {'tf':>4} {'feat':>4}  {'rows':>10}  {'first':<20} {'last':<20} "
              f"{'fresh':<5}  source")
        for status in fs.views():
            view = status.view
            first = status.first.strftime("%Y-%m-%d %H:%M") if status.first else "-"
            last = status.last.strftime("%Y-%m-%d %H:%M") if status.last else "-"
            fresh = {None: "-", True: "yes", False: "no"}[status.fresh]
            print(f"{view.name:<20} {view.version:<17} {view.timeframe:>4} {len(view.features):>4}  {status.rows:>10,}  "
                  f"{first:<20} {last:<20} {fresh:<5}  {status.source}{'' if status.registered else ' (not applied)'}")
        return 0
    if not args.name:
        raise FeatureStoreError("features show needs a view name, e.g. featurestore features show research")
    view = fs.view(args.name)
    print(f"view {view.name}  version {view.version}  timeframe {view.timeframe}  entity {view.entity}")
    if view.description:
        print(view.description)
    for name, node in view.nodes.items():
        print(f"  {name} = {render(node)}")
    entry = registered(fs.store, view.name)
    for version, info in entry["versions"].items():
        print(f"registered version {version} at {info['registered_at']} from {info.get('source', '?')}"
              f"{' (current)' if version == entry['current'] else ''}")
    return 0


def cmd_backfill(args: argparse.Namespace, fs: FeatureStore) -> int:
    _apply_definitions(args, fs)
    for report in fs.backfill(args.views, symbols=args.symbols, start=args.start, end=args.end,
                              exchange=args.exchange, progress=True, workers=args.workers,
                              process_id=args.process_id, addresses=args.addresses,
                              join_timeout_s=args.join_timeout):
        for symbol, rows in report.rows_written.items():
            print(f"{report.view} {symbol}: {rows} rows written"
                  + (" (bar history changed: recomputed)" if symbol in report.recomputed else ""))
        print(f"backfilled view {report.view} v{report.version} from {report.exchange}: "
              f"{sum(report.rows_written.values())} rows written, {report.bars_read} bars read"
              + (f" by this process ({len(report.rows_written)} symbol(s))" if args.process_id is not None else ""))
    return 0


def add_commands(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Register ``apply``, ``features`` and ``backfill``."""
    apply = commands.add_parser("apply", parents=[common], help="register feature views (all or nothing)")
    apply.add_argument("module", nargs="?", type=Path,
                       help="a Python file defining FeatureView objects (default: the config's definitions)")
    apply.add_argument("--builtin", help="a built-in template to register instead: research, indicators, daily_trend")
    apply.add_argument("--timeframe", type=timeframe,
                       help="with --builtin: the bars it runs on (default: the store's timeframe)")
    apply.set_defaults(run=cmd_apply)

    features = commands.add_parser("features", parents=[common], help="list feature views or show one")
    features.add_argument("action", choices=["list", "show"])
    features.add_argument("name", nargs="?")
    add_definitions(features)
    features.set_defaults(run=cmd_features)

    backfill = commands.add_parser("backfill", parents=[common], help="compute feature views into the offline store")
    add_views(backfill, several=True)
    add_symbols(backfill)
    backfill.add_argument("--exchange", help="default: the only exchange with bars of the view's timeframe")
    add_time_range(backfill, "write rows with ts >= start", "write rows with ts < end")
    add_definitions(backfill)
    add_cluster_options(backfill)  # --workers > 1 or a cluster: a Bytewax dataflow, symbols shared out
    backfill.set_defaults(run=cmd_backfill)
