"""The ``export``, ``train`` and ``models`` commands: point-in-time training sets and published models.

    featurestore export --views research --all-bars --label future_ret:h=1 --out train.parquet
    featurestore export --features research:ret_1,daily_trend:atr_14 --entities entities.parquet --ttl 2h --out t.parquet
    featurestore train --views research --label future_ret:h=1 --name btc_reg [--symbols ..] [--kind classifier]
    featurestore train ... --cv purged-kfold --folds 5 --embargo 12   (or --embargo 2h)
    featurestore models list [NAME]
    featurestore models promote NAME VERSION
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from app.cli.options import (
    add_definitions,
    add_symbols,
    add_time_range,
    bars_or_duration,
    comma_list,
    count,
    directory,
    number,
    output_file,
)
from app.sdk import FeatureStore
from featurestore.errors import FeatureStoreError, ModelRegistryError
from training.splits import CV_SCHEMES

__all__ = ["add_commands"]


def _features(args: argparse.Namespace, fs: FeatureStore) -> list[str]:
    """``--features view:feature,...`` and ``--views view,...`` as the SDK's feature references."""
    if args.definitions is not None:
        fs.apply(args.definitions)
    if not args.views and not args.features:
        raise FeatureStoreError("say what to export: --views research[,daily_trend] and/or --features "
                                "research:ret_1,daily_trend:atr_14")
    return [*(args.views or []), *(args.features or [])]


def cmd_export(args: argparse.Namespace, fs: FeatureStore) -> int:
    from featurestore.export import output_format

    output_format(args.out, args.format)
    if args.entities is None and not args.all_bars:
        raise FeatureStoreError("say which rows to export: --entities FILE (symbol, event_ts[, ...]) or --all-bars")
    result = fs.export(args.out, args.entities, features=_features(args, fs), labels=args.label or [], ttl=args.ttl,
                       all_bars=args.all_bars, symbols=args.symbols, start=args.start, end=args.end,
                       as_of_created=args.as_of_created, exchange=args.exchange, format=args.format, progress=True)
    span = result.meta["time_range"]
    print(f"wrote {result.rows:,} rows x {len(result.meta['views'])} view(s) to {result.path} "
          f"({span['first_event_ts']} .. {span['last_event_ts']}); sidecar {result.sidecar}")
    return 0


def cmd_train(args: argparse.Namespace, fs: FeatureStore) -> int:
    from training.model import ModelParams
    from training.train import summary_table

    params = ModelParams(kind=args.kind, num_boost_round=args.rounds, seed=args.seed, num_threads=args.threads)
    result = fs.train(features=_features(args, fs), label=args.label, name=args.name, kind=args.kind, ttl=args.ttl,
                      symbols=args.symbols, start=args.start, end=args.end, params=params, folds=args.folds,
                      onnx_dtype=args.onnx_dtype, threshold=args.threshold, cost_bps=args.cost_bps,
                      exchange=args.exchange, promote=args.promote, models_dir=args.models, progress=True,
                      cv=args.cv, embargo=args.embargo)
    print(summary_table(result))
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if args.promote:
        print(f"promoted {result.name} {result.version} to production")
    return 0


def cmd_models(args: argparse.Namespace, fs: FeatureStore) -> int:
    from training.registry import load_meta, models_root

    root = models_root(fs.store, args.models)
    if args.action == "promote":
        if not args.name or not args.version:
            raise FeatureStoreError("models promote needs NAME and VERSION, e.g. featurestore models promote btc_reg "
                                    "3f2a9c0b1d4e (see featurestore models list)")
        fs.promote(args.name, args.version, models_dir=args.models)
        print(f"promoted {args.name} {args.version} to production")
        return 0
    models = fs.models(args.name, models_dir=args.models)
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


def _training_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--views", "--view", dest="views", type=comma_list,
                        help="view name(s), comma-separated, all of their features (name@version for an older "
                             "version); the first view's timeframe gives --all-bars rows and label bars")
    parser.add_argument("--features", type=comma_list,
                        help="single features as view:feature, comma-separated (with or instead of --views)")
    parser.add_argument("--ttl", help="max age of a joined feature row: 2h (every view) or research=2m,daily_trend=1d "
                        "(default: one timeframe per view)")
    add_symbols(parser, help="comma-separated (default: every symbol with stored features)")
    add_time_range(parser, "rows with event_ts >= start (UTC)", "rows with event_ts < end (UTC)")
    parser.add_argument("--exchange", help="exchange of the label bars (default: the only one stored)")
    add_definitions(parser)


def add_commands(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Register ``export``, ``train`` and ``models``."""
    export = commands.add_parser("export", parents=[common], help="point-in-time training set to parquet/CSV/Arrow")
    _training_options(export)
    rows = export.add_mutually_exclusive_group()
    rows.add_argument("--entities", type=Path, help="parquet/CSV/Arrow file with symbol, event_ts (UTC) [, extras]")
    rows.add_argument("--all-bars", action="store_true", help="one row per feature row of the first view")
    export.add_argument("--label", action="append", help="label spec (repeatable): future_ret:h=1, bucket:h=12,x=0.01, "
                        "triple_barrier:h=24,pt=2,sl=2,atr=14")
    export.add_argument("--as-of-created", action="store_true", help="ignore feature rows written after event_ts")
    export.add_argument("--out", type=output_file, required=True, help="output file (.parquet, .csv, .arrow)")
    export.add_argument("--format", choices=["parquet", "csv", "arrow"], help="default: from --out's extension")
    export.set_defaults(run=cmd_export)

    train = commands.add_parser("train", parents=[common], help="train, evaluate, export to ONNX and register a model")
    _training_options(train)
    train.add_argument("--label", required=True, help="future_ret:h=1 (regressor), bucket:h=12,x=0.01 or "
                       "triple_barrier:h=24,pt=2,sl=2,atr=14 (classifier or regressor on its return)")
    train.add_argument("--name", required=True, help="model name in the registry")
    train.add_argument("--kind", choices=["regressor", "classifier"], default="regressor")
    train.add_argument("--cv", choices=CV_SCHEMES, default="walk-forward",
                       help="cross-validation of the out-of-sample figures: walk-forward (expanding, the first half "
                       "trains the first fold) or purged-kfold (every block the test once); training rows are purged "
                       "on each label's end time")
    train.add_argument("--folds", type=count(1), default=4, help="test blocks of --cv (purged-kfold: at least 2)")
    train.add_argument("--embargo", type=bars_or_duration, default=0,
                       help="drop training rows within this after each test block (walk-forward: and before it): "
                       "bars of the label's timeframe (3) or a duration (2h)")
    train.add_argument("--rounds", type=count(1), default=300, help="max boosting rounds (early stopping decides)")
    train.add_argument("--seed", type=int, default=7)
    train.add_argument("--threads", type=count(1), default=2, help="LightGBM threads (fixed for reproducible models)")
    train.add_argument("--onnx-dtype", choices=["float64", "float32"], default="float64",
                       help="published ONNX input type (float32 is refused when it misroutes)")
    train.add_argument("--threshold", type=number(at_least=0), help="trade only when |signal| > threshold (the backtest's, and "
                       "the model's default in serving); default: chosen on the out-of-sample folds, at least the "
                       "round-trip cost for a regressor, none that trades at a loss")
    train.add_argument("--cost-bps", type=number(at_least=0), default=5.0, help="backtest cost per side in basis points")
    train.add_argument("--promote", action="store_true", help="point production at the new version")
    train.add_argument("--models", type=directory, help="models directory (default <store>/models)")
    train.set_defaults(run=cmd_train)

    models = commands.add_parser("models", parents=[common], help="list model versions or promote one")
    models.add_argument("action", choices=["list", "promote"])
    models.add_argument("name", nargs="?")
    models.add_argument("version", nargs="?")
    models.add_argument("--models", type=directory, help="models directory (default <store>/models)")
    models.set_defaults(run=cmd_models)
