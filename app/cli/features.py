"""The ``features`` and ``backfill`` commands: feature views listed, shown and computed into the offline store.

    featurestore features list | show VIEW [--definitions my_views.py]
    featurestore backfill --view research[,indicators] [--symbols ..] [--start ..] [--end ..]
"""

from __future__ import annotations

import argparse
from datetime import datetime

from app.cli.options import add_definitions, add_symbols, comma_list, utc
from featurestore.errors import FeatureStoreError
from featurestore.store import Store

__all__ = ["add_commands"]


def cmd_features(args: argparse.Namespace, store: Store, now: datetime) -> int:
    from featurestore.expressions import render
    from featurestore.registry import available_views, registered, resolve_view

    if args.action == "list":
        for view in available_views(args.definitions).values():
            stored = store.stored_versions(view.name)
            state = "backfilled" if view.version in stored else (
                f"stored versions differ: {', '.join(stored)}" if stored else "not backfilled")
            print(f"{view.name:<14} v{view.version}  {view.timeframe:>4}  {len(view.features):>2} features  {state}")
        return 0
    if not args.name:
        raise FeatureStoreError("features show needs a view name, e.g. featurestore features show research")
    view = resolve_view(args.name, args.definitions)
    print(f"view {view.name}  version {view.version}  timeframe {view.timeframe}  entity {view.entity}")
    if view.description:
        print(view.description)
    for name, node in view.nodes.items():
        print(f"  {name} = {render(node)}")
    entry = registered(store, view.name)
    for version, info in entry["versions"].items():
        print(f"registered version {version} at {info['registered_at']}{' (current)' if version == entry['current'] else ''}")
    return 0


def cmd_backfill(args: argparse.Namespace, store: Store, now: datetime) -> int:
    from featurestore.backfill import backfill
    from featurestore.registry import resolve_view

    for name in args.view:
        report = backfill(store, resolve_view(name, args.definitions), now=now, symbols=args.symbols,
                          exchange=args.exchange, start=args.start, end=args.end)
        for symbol, rows in report.rows_written.items():
            print(f"{report.view} {symbol}: {rows} rows written"
                  + (" (bar history changed: recomputed)" if symbol in report.recomputed else ""))
        print(f"backfilled view {report.view} v{report.version} from {report.exchange}: "
              f"{sum(report.rows_written.values())} rows written, {report.bars_read} bars read")
    return 0


def add_commands(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Register ``features`` and ``backfill``."""
    features = commands.add_parser("features", parents=[common], help="list feature views or show one")
    features.add_argument("action", choices=["list", "show"])
    features.add_argument("name", nargs="?")
    add_definitions(features)
    features.set_defaults(run=cmd_features)

    backfill = commands.add_parser("backfill", parents=[common], help="compute feature views into the offline store")
    backfill.add_argument("--view", type=comma_list, required=True, help="view name(s), comma-separated")
    add_symbols(backfill)
    backfill.add_argument("--exchange", help="default: the only exchange with bars of the view's timeframe")
    backfill.add_argument("--start", type=utc, help="write rows with ts >= start")
    backfill.add_argument("--end", type=utc, help="write rows with ts < end")
    add_definitions(backfill)
    backfill.set_defaults(run=cmd_backfill)
