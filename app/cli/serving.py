"""The ``score``, ``serve``, ``verify-signal`` and ``materialize`` commands of the ``featurestore`` CLI.

``app.cli.main`` calls ``add_commands(commands, common)``. Signing and verifying need the key in
``$FEATURESTORE_SIGNING_KEY`` (never printed or written).

    featurestore score --model btc_reg --symbols BTC/USDT,ETH/USDT     signed signals as JSON lines (+ audit log)
    featurestore serve [--host 127.0.0.1] [--port 8000] [--model NAME] [--token-env FEATURESTORE_API_TOKEN]
    featurestore verify-signal signals.jsonl                           exit 0 when every line verifies, else 1
    featurestore materialize --view daily_trend [--symbols ..]         newest offline rows -> online store
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from app.cli.options import comma_list, view_durations
from app.sdk import FeatureStore
from featurestore.errors import FeatureStoreError
from featurestore.store import Store

if TYPE_CHECKING:
    from serving.signal_service import SignalService
    from serving.signals import Thresholds

__all__ = ["add_commands", "model_options", "thresholds_from_args"]


def _service(args: argparse.Namespace, store: Store, *, fsync: bool) -> SignalService:
    from serving.audit import AuditLog
    from serving.scorer import open_scorer
    from serving.signal_service import SignalService
    from serving.signals import signing_key

    key = signing_key()
    model = args.model or _production_model(store, args.models)
    scorer = open_scorer(store, model, version=args.version, models=args.models, max_age=args.max_age)
    audit = AuditLog(args.audit or store.audit_path, fsync=fsync)
    return SignalService(scorer, key=key, audit=audit, thresholds=thresholds_from_args(args), size=args.size)


def thresholds_from_args(args: argparse.Namespace) -> Thresholds | None:
    """``--long-above`` and ``--short-below`` (both or neither: None, the model's threshold)."""
    from serving.signals import Thresholds

    if args.long_above is None and args.short_below is None:
        return None
    if args.long_above is None or args.short_below is None:
        raise FeatureStoreError("give both --long-above and --short-below (or neither: the model's threshold)")
    return Thresholds(args.long_above, args.short_below)


def _production_model(store: Store, models: Path | None) -> str:
    from training.registry import list_models, models_root

    names = sorted({m.name for m in list_models(models_root(store, models)) if m.production})
    if len(names) != 1:
        raise FeatureStoreError("name the model with --model NAME (or a model directory); production models: "
                                + (", ".join(names) or "none (featurestore models promote NAME VERSION)"))
    return names[0]


def cmd_score(args: argparse.Namespace, fs: FeatureStore) -> int:
    store, now = fs.store, fs.clock()
    with _service(args, store, fsync=True) as service:
        for signal in service.signals(args.symbols, now=now):
            print(json.dumps(signal, sort_keys=True, separators=(",", ":"), ensure_ascii=False))
    return 0


def cmd_serve(args: argparse.Namespace, fs: FeatureStore) -> int:
    store = fs.store
    from serving.http import create_app, serve

    token = os.environ.get(args.token_env) or None
    with _service(args, store, fsync=False) as service:
        model = service.scorer.model
        app = create_app(service, clock=lambda: datetime.now(UTC), token=token, max_batch=args.max_batch)
        print(f"serving model {model.name} {model.version} on http://{args.host}:{args.port} (OpenAPI: /openapi.json); "
              f"auth: {'bearer token from $' + args.token_env if token else 'off (set $' + args.token_env + ')'}; "
              f"audit log {service.audit.path}", flush=True)
        serve(app, host=args.host, port=args.port)
    return 0


def cmd_verify(args: argparse.Namespace, fs: FeatureStore) -> int:
    from serving.signals import signing_key, verify_file

    if not args.file.is_file():
        raise FeatureStoreError(f"no signal file at {args.file}")
    problems = verify_file(args.file, key=signing_key())
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if problems:
        return 1
    print(f"every signal in {args.file} verifies")
    return 0


def cmd_materialize(args: argparse.Namespace, fs: FeatureStore) -> int:
    store, now = fs.store, fs.clock()
    from featurestore.materialize import materialize_latest
    from featurestore.online import connect
    from featurestore.registry import resolve_view

    view = resolve_view(store, args.view, args.definitions, now=now)
    exchange = store.resolve_exchange(view.timeframe, args.exchange)
    symbols = args.symbols or [s.symbol for s in store.series(exchange=exchange, timeframe=view.timeframe)]
    with connect(store.online_url) as online:
        written = materialize_latest(store, view, symbols, online, now=now, exchange=exchange)
        for symbol, row in online.get_many(view.name, symbols).items():
            print(f"{view.name} {symbol}: online row at {row.ts.isoformat()} (version {row.view_version})")
    print(f"materialized view {view.name} v{view.version}: {written} of {len(symbols)} row(s) written "
          f"(a newer online row is kept)")
    return 0


def model_options(parser: argparse.ArgumentParser) -> None:
    """The options that choose a model and turn its scores into signals (``score``, ``serve``, ``stream``)."""
    parser.add_argument("--model", help="registry name (its production version) or a model directory (contains '/'); "
                        "serve: default the only production model")
    parser.add_argument("--version", help="a registry version instead of production")
    parser.add_argument("--models", type=Path, help="models directory (default <store>/models)")
    parser.add_argument("--max-age", type=view_durations, help="refuse rows older than this: 90s (every view) or "
                        "research=90s,daily_trend=2d (default: each view's TTL in the model's meta.json)")
    parser.add_argument("--long-above", type=float, help="LONG when the score is above (default: the model's "
                        "backtest threshold, else 0)")
    parser.add_argument("--short-below", type=float, help="SHORT when the score is below (default: minus it)")
    parser.add_argument("--size", type=float, default=1.0, help="position size of a signal's transition")
    parser.add_argument("--audit", type=Path, help="audit log (default <store>/signals/signals.jsonl)")


def add_commands(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Register ``score``, ``serve``, ``verify-signal`` and ``materialize`` on the ``featurestore`` parser."""
    score = commands.add_parser("score", parents=[common], help="score symbols now: signed signals as JSON lines")
    score.add_argument("--symbols", type=comma_list, required=True, help="comma-separated, e.g. BTC/USDT,ETH/USDT")
    model_options(score)
    score.set_defaults(run=cmd_score)

    serve = commands.add_parser("serve", parents=[common], help="HTTP service: features, scores, health, metrics")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--token-env", default="FEATURESTORE_API_TOKEN",
                       help="environment variable holding the bearer token (auth is off when it is unset)")
    serve.add_argument("--max-batch", type=int, default=256, help="most symbols in one POST /score")
    model_options(serve)
    serve.set_defaults(run=cmd_serve)

    verify = commands.add_parser("verify-signal", parents=[common], help="check the signature of every signal")
    verify.add_argument("file", type=Path)
    verify.set_defaults(run=cmd_verify)

    materialize = commands.add_parser("materialize", parents=[common],
                                      help="copy each symbol's newest offline row of a view to the online store")
    materialize.add_argument("--view", required=True)
    materialize.add_argument("--symbols", type=comma_list, help="default: every symbol with bars of the view's timeframe")
    materialize.add_argument("--exchange", help="default: the only exchange with bars of the view's timeframe")
    materialize.add_argument("--definitions", type=Path, help="a Python file defining FeatureView objects")
    materialize.set_defaults(run=cmd_materialize)
