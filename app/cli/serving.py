"""The ``score``, ``serve``, ``verify-signal``, ``materialize`` and ``online`` commands: the online side.

Signing and verifying need the key in ``$FEATURESTORE_SIGNING_KEY`` (never printed or written).

    featurestore score --model btc_reg --symbols BTC/USDT,ETH/USDT     signed signals as JSON lines (+ audit log)
    featurestore score --model btc_reg --symbols BTC/USDT --as-of 2024-05-01T12:00     a past moment (replay log)
    featurestore serve [--host 127.0.0.1] [--port 8000] [--model NAME] [--token-env FEATURESTORE_API_TOKEN]
                                                                       (the dashboard: http://HOST:PORT/ui)
    featurestore serve --features-only                                 features alone: no model, no signing key
    featurestore verify-signal signals.jsonl                           exit 0 when every line and the chain verify
    featurestore materialize --view daily_trend [--symbols ..]         newest offline rows -> online store
    featurestore online get --view research [--symbols BTC/USDT]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.cli.options import (
    add_definitions,
    add_symbols,
    add_views,
    count,
    directory,
    number,
    utc,
    view_durations,
)
from app.sdk import FeatureStore
from featurestore.errors import FeatureStoreError

if TYPE_CHECKING:
    from serving.signals import Thresholds

__all__ = ["add_commands", "model_options", "signal_options", "thresholds_from_args"]


def thresholds_from_args(args: argparse.Namespace) -> Thresholds | None:
    """``--long-above`` and ``--short-below`` (both or neither: None, the model's threshold)."""
    from serving.signals import Thresholds

    if args.long_above is None and args.short_below is None:
        return None
    if args.long_above is None or args.short_below is None:
        raise FeatureStoreError("give both --long-above and --short-below (or neither: the model's threshold)")
    return Thresholds(args.long_above, args.short_below)


def port(text: str) -> int:
    """A TCP port: an integer in 1..65535."""
    if not text.strip().isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port: give one in 1..65535")
    return int(text)


def signal_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of ``FeatureStore.signal_service`` that the model options give."""
    return {"version": args.version, "max_age": args.max_age, "thresholds": thresholds_from_args(args),
            "size": args.size, "audit": args.audit, "models_dir": args.models}


def cmd_score(args: argparse.Namespace, fs: FeatureStore) -> int:
    for signal in fs.signals(args.symbols, model=args.model, as_of=args.as_of, **signal_options(args)):
        print(json.dumps(signal, sort_keys=True, separators=(",", ":"), ensure_ascii=False))
    return 0


def cmd_serve(args: argparse.Namespace, fs: FeatureStore) -> int:
    from app.dashboard import dashboard_routes, gauge_samples
    from featurestore.online import connect
    from serving.http import bind, create_app, serve

    token = os.environ.get(args.token_env) or None
    auth = f"bearer token from ${args.token_env}" if token else f"off (set ${args.token_env})"
    clock = functools.partial(datetime.now, UTC)  # the server's clock: the wall clock
    live = FeatureStore(fs.root, clock=clock)  # the dashboard's pages are as of each request
    with contextlib.ExitStack() as opened:
        if args.features_only:
            online = opened.enter_context(connect(fs.store.online_url, readonly=True))
            views = [status.view.name for status in fs.views() if status.registered]
            app = create_app(None, online=online, views=views, clock=clock, token=token,
                             routes=dashboard_routes(live))
            what, log = "features only (no model, no signing key)", ""
        else:
            service = opened.enter_context(fs.signal_service(args.model, fsync=False, **signal_options(args)))
            app = create_app(service, clock=clock, token=token, max_batch=args.max_batch, routes=dashboard_routes(live),
                             gauges=gauge_samples(live, service.scorer, clock))
            what, log = f"model {service.scorer.model.name} {service.scorer.model.version}", \
                f"; audit log {service.audit.path}"
        listener = bind(args.host, args.port)  # refused here, before anything is announced
        print(f"serving {what} on http://{args.host}:{listener.getsockname()[1]} (docs: /docs, OpenAPI: "
              f"/openapi.json, dashboard: /ui); auth: {auth}{log}", flush=True)
        serve(app, listener)
    return 0


def cmd_verify(args: argparse.Namespace, fs: FeatureStore) -> int:
    from serving.audit import verify_log
    from serving.signals import signing_key

    report = verify_log(args.file, key=signing_key())
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for problem in report.problems:
        print(f"error: {problem}", file=sys.stderr)
    if report.problems:
        return 1
    covered = "no head yet" if report.head_seq is None else f"its signed head covers seq 1..{report.head_seq}"
    print(f"every signal in {args.file} verifies: {report.signals:,} signal(s), chained through seq {report.seq} "
          f"({covered})")
    return 0


def cmd_materialize(args: argparse.Namespace, fs: FeatureStore) -> int:
    from featurestore.online import connect

    if args.definitions is not None:
        fs.apply(args.definitions)
    view = fs.view(args.view)
    written = fs.materialize(args.view, symbols=args.symbols, exchange=args.exchange)
    with connect(fs.store.online_url, readonly=True) as online:
        rows = online.rows(view.name)
    for row in rows:
        if args.symbols is None or row.symbol in args.symbols:
            print(f"{view.name} {row.symbol}: online row at {row.ts.isoformat()} (version {row.view_version})")
    print(f"materialized view {view.name} v{view.version}: {written} row(s) written (a newer online row is kept)")
    return 0


def cmd_online(args: argparse.Namespace, fs: FeatureStore) -> int:
    from featurestore.online import connect

    with connect(fs.store.online_url, readonly=True) as online:
        rows = list(online.get_many(args.view, args.symbols).values()) if args.symbols else online.rows(args.view)
    missing = sorted(set(args.symbols or []) - {row.symbol for row in rows})
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


def model_options(parser: argparse.ArgumentParser) -> None:
    """The options that choose a model and turn its scores into signals (``score``, ``serve``, ``stream``)."""
    parser.add_argument("--model", help="registry name (its production version) or a model directory (contains '/'); "
                        "score and serve: default the only production model")
    parser.add_argument("--version", help="a registry version instead of production")
    parser.add_argument("--models", type=directory, help="models directory (default <store>/models)")
    parser.add_argument("--max-age", type=view_durations, help="refuse rows older than this: 90s (every view) or "
                        "research=90s,daily_trend=2d (default: each view's TTL in the model's meta.json)")
    parser.add_argument("--long-above", type=number(), help="LONG when the score is above (default: the model's "
                        "backtest threshold, else 0)")
    parser.add_argument("--short-below", type=number(), help="SHORT when the score is below (default: minus it)")
    parser.add_argument("--size", type=number(above=0), default=1.0, help="position size of a signal's transition")
    parser.add_argument("--audit", type=Path, help="audit log (default <store>/signals/signals.jsonl; a replay or "
                        "--as-of: <store>/signals/replay.jsonl)")


def add_commands(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Register ``score``, ``serve``, ``verify-signal``, ``materialize`` and ``online``."""
    score = commands.add_parser("score", parents=[common], help="score symbols now: signed signals as JSON lines")
    add_symbols(score, help="comma-separated, e.g. BTC/USDT,ETH/USDT", required=True)
    score.add_argument("--as-of", type=utc, help="score this past moment instead of now (UTC, e.g. 2024-05-01T12:00): "
                       "the skew guard measures ages from it; signals marked replay, to the replay log")
    model_options(score)
    score.set_defaults(run=cmd_score)

    serve = commands.add_parser("serve", parents=[common], help="HTTP service: features, scores, health, metrics, docs")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=port, default=8000, help="TCP port, 1..65535")
    serve.add_argument("--features-only", action="store_true",
                       help="serve the online store's features alone: no model, no /score, no signing key")
    serve.add_argument("--token-env", default="FEATURESTORE_API_TOKEN",
                       help="environment variable holding the bearer token (auth is off when it is unset)")
    serve.add_argument("--max-batch", type=count(1), default=256, help="most symbols in one POST /score")
    model_options(serve)
    serve.set_defaults(run=cmd_serve)

    verify = commands.add_parser("verify-signal", parents=[common], help="check every signal's signature and the "
                                 "log's hash chain against its signed head (deleted, reordered, replayed, cut lines)")
    verify.add_argument("file", type=Path, help="an audit log, e.g. <store>/signals/signals.jsonl")
    verify.set_defaults(run=cmd_verify)

    materialize = commands.add_parser("materialize", parents=[common],
                                      help="copy each symbol's newest offline row of a view to the online store")
    add_views(materialize, several=False)
    add_symbols(materialize, help="comma-separated (default: every symbol with bars of the view's timeframe)")
    materialize.add_argument("--exchange", help="default: the only exchange with bars of the view's timeframe")
    add_definitions(materialize)
    materialize.set_defaults(run=cmd_materialize)

    online = commands.add_parser("online", parents=[common], help="read the online store")
    online.add_argument("action", choices=["get"])
    add_views(online, several=False)
    add_symbols(online, help="comma-separated (default: every symbol of the view)")
    online.set_defaults(run=cmd_online)
