"""The ``featurestore`` command line. Every command works on one store directory:
``--store DIR``, else ``$FEATURESTORE_HOME``, else ``./store``.

Run ``featurestore --help`` or ``featurestore <command> --help``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from featurestore.errors import FeatureStoreError
from featurestore.store import Store, default_store_root

__all__ = ["comma_list", "main", "parse_utc"]


def parse_utc(text: str) -> datetime:
    """``2024-01-01`` or ``2024-01-01T12:00[:00][+00:00|Z]``; a time without an offset is UTC."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO-8601 date/time: {text!r} (e.g. 2024-01-01 or 2024-01-01T12:00Z)") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def comma_list(text: str) -> list[str]:
    """An argparse type: ``"BTC/USDT, ETH/USDT"`` -> ``["BTC/USDT", "ETH/USDT"]``; empty is an error."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise argparse.ArgumentTypeError("give at least one, comma-separated, e.g. BTC/USDT,ETH/USDT or research")
    return items


def _print_new_rows(new_rows: dict[str, int], store: Store) -> None:
    for symbol, count in new_rows.items():
        print(f"{symbol}: {count} new bars")
    print(f"stored {sum(new_rows.values())} new bars in {store.root}")


def cmd_ingest(args: argparse.Namespace, store: Store, now: datetime) -> int:
    from featurestore import ingest

    args.symbols_given = args.symbols is not None
    args.symbols = args.symbols or ["BTC/USDT"]
    if args.source == "synthetic":
        new_rows = ingest.ingest_synthetic(store, args.symbols, args.timeframe, since=args.since, until=args.until,
                                           now=now, seed=args.seed)
    elif args.source == "resample":
        new_rows = ingest.ingest_resampled(store, exchange=args.exchange or "synthetic",
                                           from_timeframe=args.from_timeframe, timeframe=args.timeframe, now=now,
                                           symbols=args.symbols if args.symbols_given else None)
    elif args.source == "csv":
        if not args.path or not args.symbol:
            raise FeatureStoreError("--source csv needs --path FILE.csv and --symbol SYMBOL")
        new_rows = ingest.ingest_csv(store, args.path, symbol=args.symbol, timeframe=args.timeframe, now=now,
                                     exchange=args.exchange or "csv")
    else:
        new_rows = ingest.ingest_exchange(store, args.exchange or "binance", args.symbols, args.timeframe,
                                          since=args.since, until=args.until, now=now)
    _print_new_rows(new_rows, store)
    return 0


def cmd_validate(args: argparse.Namespace, store: Store, now: datetime) -> int:
    from featurestore.validate import validate_store

    report = validate_store(store, symbols=args.symbols)
    with pl.Config(tbl_rows=200, tbl_cols=20, tbl_hide_dataframe_shape=True, fmt_str_lengths=60):
        print(report.summary)
        if report.gaps.height:
            print(f"\n{report.gaps.height} gap(s):")
            print(report.gaps)
        else:
            print("\nno gaps")
    for problem in report.problems:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if report.problems else 0


def cmd_sql(args: argparse.Namespace, store: Store, now: datetime) -> int:
    from featurestore.sql import run_sql
    from featurestore.sql_output import write_result

    write_result(run_sql(args.query, store), args.format, args.output)
    return 0


def cmd_features(args: argparse.Namespace, store: Store, now: datetime) -> int:
    from featurestore.expressions import render
    from featurestore.offline import stored_versions
    from featurestore.registry import available_views, registered, resolve_view

    if args.action == "list":
        for view in available_views(args.definitions).values():
            stored = stored_versions(store, view.name)
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


def cmd_demo(args: argparse.Namespace, store: Store, now: datetime) -> int:
    from featurestore.demo import run_demo

    return run_demo(store, now=now, symbols=args.symbols, since=args.since, until=args.until, seed=args.seed)


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--store", type=Path, default=None,
                        help="store directory (default: $FEATURESTORE_HOME, else ./store)")
    parser = argparse.ArgumentParser(prog="featurestore", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ingest = commands.add_parser("ingest", parents=[common], help="bring bars into the store")
    ingest.add_argument("--source", choices=["synthetic", "ccxt", "csv", "resample"], default="ccxt")
    ingest.add_argument("--from-timeframe", default="1m", help="resample: the stored timeframe to aggregate")
    ingest.add_argument("--exchange", help="ccxt exchange id (ccxt source, default binance) or a label (csv)")
    ingest.add_argument("--symbols", type=comma_list, help="comma-separated, e.g. BTC/USDT,ETH/USDT (default BTC/USDT; "
                        "resample: all stored)")
    ingest.add_argument("--symbol", help="the symbol of a CSV file")
    ingest.add_argument("--path", type=Path, help="CSV file to import")
    ingest.add_argument("--timeframe", default="1h", help="1m, 5m, 1h, 4h, 1d, 1w, ...")
    ingest.add_argument("--since", type=parse_utc, default=parse_utc("2024-01-01"), help="first bar open time (UTC)")
    ingest.add_argument("--until", type=parse_utc, help="stop before this open time (default: now)")
    ingest.add_argument("--seed", type=int, default=7, help="synthetic market seed")
    ingest.set_defaults(run=cmd_ingest)

    validate = commands.add_parser("validate", parents=[common], help="re-check stored bars and list gaps")
    validate.add_argument("--symbols", type=comma_list)
    validate.set_defaults(run=cmd_validate)

    sql = commands.add_parser("sql", parents=[common], help="read-only SQL over the offline store (DuckDB)")
    sql.add_argument("query")
    sql.add_argument("--format", choices=["table", "csv", "json", "parquet"], default="table")
    sql.add_argument("--output", type=Path, help="write the result to this file instead of stdout")
    sql.set_defaults(run=cmd_sql)

    features = commands.add_parser("features", parents=[common], help="list feature views or show one")
    features.add_argument("action", choices=["list", "show"])
    features.add_argument("name", nargs="?")
    features.add_argument("--definitions", type=Path, help="a Python file defining FeatureView objects")
    features.set_defaults(run=cmd_features)

    backfill = commands.add_parser("backfill", parents=[common], help="compute feature views into the offline store")
    backfill.add_argument("--view", type=comma_list, required=True, help="view name(s), comma-separated")
    backfill.add_argument("--symbols", type=comma_list, help="default: every stored symbol")
    backfill.add_argument("--exchange", help="default: the only exchange with bars of the view's timeframe")
    backfill.add_argument("--start", type=parse_utc, help="write rows with ts >= start")
    backfill.add_argument("--end", type=parse_utc, help="write rows with ts < end")
    backfill.add_argument("--definitions", type=Path, help="a Python file defining FeatureView objects")
    backfill.set_defaults(run=cmd_backfill)

    demo = commands.add_parser("demo", parents=[common], help="the main job, end to end, on the synthetic market")
    demo.add_argument("--symbols", type=comma_list, default=["BTC/USDT", "ETH/USDT", "SOL/USDT", "BNB/USDT", "XRP/USDT"])
    demo.add_argument("--since", type=parse_utc, default=parse_utc("2024-01-01"))
    demo.add_argument("--until", type=parse_utc, default=parse_utc("2025-01-01"))
    demo.add_argument("--seed", type=int, default=7)
    demo.set_defaults(run=cmd_demo)
    from training.cli import add_commands
    add_commands(commands, common)
    from streaming.cli import add_commands as add_streaming_commands
    add_streaming_commands(commands, common)
    from serving.cli import add_commands as add_serving_commands
    add_serving_commands(commands, common)
    return parser


def main(argv: Sequence[str] | None = None, *, now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> int:
    """Entry point; returns the exit code (0 ok, 1 a user-facing error, 2 bad usage)."""
    args = _parser().parse_args(argv)
    store = Store(default_store_root(args.store))
    try:
        return args.run(args, store, now())
    except FeatureStoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
