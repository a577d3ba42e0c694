"""The ``ingest``, ``validate`` and ``sql`` commands: bars in, bars checked, SQL over the store.

    featurestore ingest --source synthetic|ccxt|csv|resample [--symbols ..] [--timeframe 1h] [--since ..]
    featurestore validate [--symbols ..]
    featurestore sql "SELECT ..." [--format table|csv|json|parquet] [--output FILE]
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path

import polars as pl

from app.cli.options import add_symbols, comma_list, utc
from featurestore.errors import FeatureStoreError
from featurestore.store import Store

__all__ = ["add_commands"]


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


def add_commands(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Register ``ingest``, ``validate`` and ``sql``."""
    ingest = commands.add_parser("ingest", parents=[common], help="bring bars into the store")
    ingest.add_argument("--source", choices=["synthetic", "ccxt", "csv", "resample"], default="ccxt")
    ingest.add_argument("--from-timeframe", default="1m", help="resample: the stored timeframe to aggregate")
    ingest.add_argument("--exchange", help="ccxt exchange id (ccxt source, default binance) or a label (csv)")
    ingest.add_argument("--symbols", type=comma_list, help="comma-separated, e.g. BTC/USDT,ETH/USDT (default BTC/USDT; "
                        "resample: all stored)")
    ingest.add_argument("--symbol", help="the symbol of a CSV file")
    ingest.add_argument("--path", type=Path, help="CSV file to import")
    ingest.add_argument("--timeframe", default="1h", help="1m, 5m, 1h, 4h, 1d, 1w, ...")
    ingest.add_argument("--since", type=utc, default=utc("2024-01-01"), help="first bar open time (UTC)")
    ingest.add_argument("--until", type=utc, help="stop before this open time (default: now)")
    ingest.add_argument("--seed", type=int, default=7, help="synthetic market seed")
    ingest.set_defaults(run=cmd_ingest)

    validate = commands.add_parser("validate", parents=[common], help="re-check stored bars and list gaps")
    add_symbols(validate)
    validate.set_defaults(run=cmd_validate)

    sql = commands.add_parser("sql", parents=[common], help="read-only SQL over the offline store (DuckDB)")
    sql.add_argument("query")
    sql.add_argument("--format", choices=["table", "csv", "json", "parquet"], default="table")
    sql.add_argument("--output", type=Path, help="write the result to this file instead of stdout")
    sql.set_defaults(run=cmd_sql)
