"""The ``init``, ``ingest``, ``validate``, ``compact`` and ``sql`` commands: the store's settings, bars in, bars
checked, appended bars folded into their year files, SQL.

    featurestore init [--online-store URL] [--exchange X] [--timeframe 1m] [--definitions my_views.py]
    featurestore ingest --source synthetic|ccxt|csv|resample [--symbols ..] [--timeframe 1m] [--since ..]
    featurestore ingest --source resample --from-timeframe 1h --timeframe 1d [--allow-partial]
    featurestore validate [--symbols ..]
    featurestore compact [--exchange X] [--timeframe 1m] [--symbols ..]
    featurestore sql "SELECT ..." [--format table|csv|json|parquet] [--output FILE]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import polars as pl

from app.cli.options import (
    add_regime,
    add_symbols,
    add_time_range,
    comma_list,
    count,
    regime_from_args,
    timeframe,
    timezone,
)
from app.sdk import FeatureStore
from featurestore.errors import FeatureStoreError

__all__ = ["add_commands"]


def cmd_init(args: argparse.Namespace, fs: FeatureStore) -> int:
    fs = FeatureStore.init(fs.root, exchange=args.exchange, timeframe=args.timeframe, online_store=args.online_store,
                           definitions=args.definitions, clock=fs.clock)
    config = fs.config
    print(f"wrote {fs.store.config_path}: exchange {config.exchange or '(the only one stored)'}, timeframe "
          f"{config.timeframe}, online store {config.online_store}, definitions {list(config.definitions) or 'none'}")
    return 0


def cmd_ingest(args: argparse.Namespace, fs: FeatureStore) -> int:
    if args.source == "csv" and (not args.path or not args.symbols or len(args.symbols) != 1):
        raise FeatureStoreError("--source csv needs --path FILE.csv and one --symbol SYMBOL")
    new_rows = fs.ingest(args.source, symbols=args.symbols, timeframe=args.timeframe, since=args.start, until=args.end,
                         exchange=args.exchange, seed=args.seed, path=args.path, from_timeframe=args.from_timeframe,
                         regime=regime_from_args(args), allow_partial=args.allow_partial, timezone=args.timezone)
    for symbol, new in new_rows.items():
        print(f"{symbol}: {new} new bars" + (f" (every bar of {args.path} in range is stored already)"
                                              if args.source == "csv" and not new else ""))
    print(f"stored {sum(new_rows.values())} new bars in {fs.root}")
    return 0


def cmd_validate(args: argparse.Namespace, fs: FeatureStore) -> int:
    report = fs.validate(args.symbols)
    with pl.Config(tbl_rows=200, tbl_cols=20, tbl_hide_dataframe_shape=True, fmt_str_lengths=60):
        print(report.summary)
        if report.gaps.height:
            print(f"\n{report.gaps.height} gap(s):")
            print(report.gaps)
        else:
            print("\nno gaps")
        if report.partial.height:
            print(f"\n{report.partial.height} bar(s) built from incomplete periods (ingest --allow-partial):")
            print(report.partial)
    for problem in report.problems:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if report.problems else 0


def cmd_compact(args: argparse.Namespace, fs: FeatureStore) -> int:
    folded = fs.compact(exchange=args.exchange, timeframe=args.timeframe, symbols=args.symbols)
    for series, files in folded.items():
        if files:
            print(f"{series.exchange} {series.timeframe} {series.symbol}: {files} delta file(s) folded")
    print(f"compacted {sum(1 for files in folded.values() if files)} of {len(folded)} series in {fs.root}")
    return 0


def cmd_sql(args: argparse.Namespace, fs: FeatureStore) -> int:
    from featurestore.sql_output import check_output, write_result

    check_output(args.output, args.format, fs.root)
    write_result(fs.sql(args.query), args.format, args.output)
    return 0


def add_commands(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Register ``init``, ``ingest``, ``validate``, ``compact`` and ``sql``."""
    init = commands.add_parser("init", parents=[common], help="write the store's settings (featurestore.toml)")
    init.add_argument("--online-store", help="online store URL: sqlite:///online.sqlite (relative to the store) "
                      "or redis://host:port/db")
    init.add_argument("--exchange", help="default exchange of every command")
    init.add_argument("--timeframe", type=timeframe, help="default bar timeframe of ingest (a new store: 1m)")
    init.add_argument("--definitions", type=comma_list, help="definition modules a bare `featurestore apply` registers")
    init.set_defaults(run=cmd_init)

    ingest = commands.add_parser("ingest", parents=[common], help="bring bars into the store")
    ingest.add_argument("--source", choices=["synthetic", "ccxt", "csv", "resample"], default="synthetic",
                        help="where the bars come from")
    ingest.add_argument("--from-timeframe", default="1m", help="resample: the stored timeframe to aggregate")
    ingest.add_argument("--allow-partial", action="store_true",
                        help="resample: also store periods with missing fine bars, recorded as partial (featurestore "
                             "validate lists them; the fine bars that complete a period replace its bar)")
    ingest.add_argument("--exchange", help="ccxt exchange id (ccxt source, default binance) or a label (csv)")
    add_symbols(ingest, help="comma-separated, e.g. BTC/USDT,ETH/USDT (default BTC/USDT; resample: all stored)")
    ingest.add_argument("--path", type=Path, help="CSV file to import (format: docs/csv.md)")
    ingest.add_argument("--timezone", type=timezone, help="csv: the zone of times written without a UTC offset, "
                        "e.g. UTC or Europe/Berlin (default: such times are refused)")
    ingest.add_argument("--timeframe", type=timeframe, help="1m, 5m, 1h, 4h, 1d, 1w, ... (default: the store's, 1m)")
    add_time_range(ingest, "first bar open time (UTC) (default: 2024-01-01; csv: the file's first)",
                   "stop before this open time (default: now)")
    ingest.add_argument("--seed", type=count(0), default=7, help="synthetic market seed")
    add_regime(ingest)
    ingest.set_defaults(run=cmd_ingest)

    validate = commands.add_parser("validate", parents=[common], help="re-check stored bars and list gaps")
    add_symbols(validate)
    validate.set_defaults(run=cmd_validate)

    compact = commands.add_parser("compact", parents=[common], help="fold appended bars (delta files) into the "
                                  "year files: safe beside readers and writers, and to re-run")
    compact.add_argument("--exchange", help="only this exchange's series")
    compact.add_argument("--timeframe", type=timeframe, help="only this timeframe's series")
    add_symbols(compact, help="comma-separated (default: every stored series)")
    compact.set_defaults(run=cmd_compact)

    sql = commands.add_parser("sql", parents=[common], help="read-only SQL over the offline store (DuckDB)")
    sql.add_argument("query")
    sql.add_argument("--format", choices=["table", "csv", "json", "parquet"], default="table")
    sql.add_argument("--output", type=Path, help="write the result to this file instead of stdout (outside the store)")
    sql.set_defaults(run=cmd_sql)
