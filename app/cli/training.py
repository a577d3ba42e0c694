"""The ``export``, ``train`` and ``models`` commands of the ``featurestore`` CLI.

``app.cli.main`` calls ``add_commands(commands, common)``; heavy libraries (LightGBM, ONNX,
matplotlib) are imported inside the command functions only.

    featurestore export --views research --all-bars --label future_ret:h=1 --out train.parquet
    featurestore export --views research,daily_trend --entities entities.parquet --ttl 2h --out train.parquet
    featurestore train --views research --label future_ret:h=1 --name btc_reg [--symbols ..] [--kind classifier]
    featurestore models list [NAME]
    featurestore models promote NAME VERSION
"""

from __future__ import annotations

import argparse
from datetime import datetime
from pathlib import Path

from app.cli.options import comma_list, utc
from app.sdk import FeatureStore
from featurestore.errors import FeatureStoreError, ModelRegistryError
from featurestore.store import Store

__all__ = ["add_commands"]


def _views(args: argparse.Namespace, store: Store, now: datetime) -> list:
    from featurestore.registry import resolve_view

    return [resolve_view(store, name, args.definitions, now=now) for name in args.views]


def cmd_export(args: argparse.Namespace, fs: FeatureStore) -> int:
    store, now = fs.store, fs.clock()
    from featurestore.durations import parse_ttl
    from featurestore.export import ExportOptions, output_format, write_training_set
    from training.labels import parse_label

    views = _views(args, store, now)
    labels = [parse_label(text) for text in args.label or []]
    ttl = parse_ttl(args.ttl, views)
    output_format(args.out, args.format)
    if args.entities is None and not args.all_bars:
        raise FeatureStoreError("say which rows to export: --entities FILE (symbol, event_ts[, ...]) or --all-bars")
    options = ExportOptions(all_bars=args.all_bars, labels=labels, ttl=ttl, as_of_created=args.as_of_created,
                            symbols=args.symbols, start=args.start, end=args.end, exchange=args.exchange)
    result = write_training_set(args.out, store, views, args.entities, options=options, format=args.format)
    span = result.meta["time_range"]
    print(f"wrote {result.rows:,} rows x {len(result.meta['views'])} view(s) to {result.path} "
          f"({span['first_event_ts']} .. {span['last_event_ts']}); sidecar {result.sidecar}")
    return 0


def cmd_train(args: argparse.Namespace, fs: FeatureStore) -> int:
    store, now = fs.store, fs.clock()
    from featurestore.durations import parse_ttl
    from training.labels import parse_label
    from training.model import ModelParams
    from training.registry import models_root, promote
    from training.train import summary_table, train_model

    views = _views(args, store, now)
    label = parse_label(args.label)
    params = ModelParams(kind=args.kind, num_boost_round=args.rounds, seed=args.seed, num_threads=args.threads)
    root = models_root(store, args.models)
    result = train_model(store, views=views, label=label, name=args.name, models_root=root, now=now, kind=args.kind,
                         symbols=args.symbols, start=args.start, end=args.end, params=params, folds=args.folds,
                         onnx_dtype=args.onnx_dtype, ttl=parse_ttl(args.ttl, views), exchange=args.exchange,
                         threshold=args.threshold, cost_bps=args.cost_bps)
    print(summary_table(result))
    if args.promote:
        promote(root, result.name, result.version)
        print(f"promoted {result.name} {result.version} to production")
    return 0


def cmd_models(args: argparse.Namespace, fs: FeatureStore) -> int:
    store = fs.store
    from training.registry import list_models, load_meta, models_root, promote

    root = models_root(store, args.models)
    if args.action == "promote":
        if not args.name or not args.version:
            raise FeatureStoreError("models promote needs NAME and VERSION, e.g. featurestore models promote btc_reg "
                                    "3f2a9c0b1d4e (see featurestore models list)")
        promote(root, args.name, args.version)
        print(f"promoted {args.name} {args.version} to production")
        return 0
    models = list_models(root, args.name)
    if not models:
        print(f"no models under {root}" + (f" named {args.name!r}" if args.name else "") + " (run featurestore train)")
        return 0
    for model in models:
        try:
            meta = load_meta(root, model.name, model.version)
        except ModelRegistryError as exc:  # listed all the same, with what is wrong with it
            print(f"{model.name:<20} {model.version}  unreadable: {exc}")
            continue
        score = meta.metrics.get("ic_spearman")  # out-of-sample metrics: free-form, ic_spearman when computed
        print(f"{model.name:<20} {model.version}  {meta.kind:<10} {meta.label.spec if meta.label else '-':<40} "
              f"trained {model.trained_at}  IC {'n/a' if score is None else format(score, '+.4f')}"
              f"{'  production' if model.production else ''}")
    return 0


def add_commands(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Register ``export``, ``train`` and ``models`` on the ``featurestore`` sub-command parser."""
    export = commands.add_parser("export", parents=[common], help="point-in-time training set to parquet/CSV/Arrow")
    export.add_argument("--views", type=comma_list, required=True, help="view name(s), comma-separated; the first "
                        "view's timeframe gives --all-bars rows and label bars")
    rows = export.add_mutually_exclusive_group()
    rows.add_argument("--entities", type=Path, help="parquet/CSV/Arrow file with symbol, event_ts (UTC) [, extras]")
    rows.add_argument("--all-bars", action="store_true", help="one row per feature row of the first view")
    export.add_argument("--label", action="append", help="label spec (repeatable): future_ret:h=1, bucket:h=12,x=0.01, "
                        "triple_barrier:h=24,pt=2,sl=2,atr=14")
    export.add_argument("--ttl", help="max age of a joined feature row: 2h (every view) or research=2m,daily_trend=1d; "
                        "default one timeframe per view")
    export.add_argument("--as-of-created", action="store_true", help="ignore feature rows written after event_ts")
    export.add_argument("--out", type=Path, required=True, help="output file (.parquet, .csv, .arrow)")
    export.add_argument("--format", choices=["parquet", "csv", "arrow"], help="default: from --out's extension")
    _shared(export)
    export.set_defaults(run=cmd_export)

    train = commands.add_parser("train", parents=[common], help="train, evaluate, export to ONNX and register a model")
    train.add_argument("--views", type=comma_list, required=True, help="view name(s), comma-separated")
    train.add_argument("--label", required=True, help="future_ret:h=1 (regressor), bucket:h=12,x=0.01 or "
                       "triple_barrier:h=24,pt=2,sl=2,atr=14 (classifier or regressor on its return)")
    train.add_argument("--name", required=True, help="model name in the registry")
    train.add_argument("--kind", choices=["regressor", "classifier"], default="regressor")
    train.add_argument("--ttl", help="as for export")
    train.add_argument("--folds", type=int, default=4, help="walk-forward test blocks (default 4)")
    train.add_argument("--rounds", type=int, default=300, help="max boosting rounds (early stopping decides)")
    train.add_argument("--seed", type=int, default=7)
    train.add_argument("--threads", type=int, default=2, help="LightGBM threads (fixed for reproducible models)")
    train.add_argument("--onnx-dtype", choices=["float64", "float32"], default="float64",
                       help="published ONNX input type (float32 is refused when it misroutes)")
    train.add_argument("--threshold", type=float, default=0.0,
                       help="backtest: trade only when |signal| > threshold (default 0: the sign)")
    train.add_argument("--cost-bps", type=float, default=5.0, help="backtest cost per side in basis points")
    train.add_argument("--promote", action="store_true", help="point production at the new version")
    train.add_argument("--models", type=Path, help="models directory (default <store>/models)")
    _shared(train)
    train.set_defaults(run=cmd_train)

    models = commands.add_parser("models", parents=[common], help="list model versions or promote one")
    models.add_argument("action", choices=["list", "promote"])
    models.add_argument("name", nargs="?")
    models.add_argument("version", nargs="?")
    models.add_argument("--models", type=Path, help="models directory (default <store>/models)")
    models.set_defaults(run=cmd_models)


def _shared(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--symbols", type=comma_list, help="default: every symbol with stored features")
    parser.add_argument("--start", type=utc, help="rows with event_ts >= start (UTC)")
    parser.add_argument("--end", type=utc, help="rows with event_ts < end (UTC)")
    parser.add_argument("--exchange", help="exchange of the label bars (default: the only one stored)")
    parser.add_argument("--definitions", type=Path, help="a Python file defining FeatureView objects")
