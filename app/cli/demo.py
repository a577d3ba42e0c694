"""The ``demo`` command: the main job, end to end, on the synthetic market (``app.demo``)."""

from __future__ import annotations

import argparse
from datetime import timedelta

from app.cli.options import add_regime, add_time_range, count, regime_from_args, symbols, utc
from app.sdk import FeatureStore

__all__ = ["add_commands"]


def cmd_demo(args: argparse.Namespace, fs: FeatureStore) -> int:
    from app.demo import REGIME_DAYS, run_demo

    if args.regime_at is None:
        args.regime_at = args.end - timedelta(days=REGIME_DAYS)
    return run_demo(fs.store, now=fs.clock(), symbols=args.symbols, since=args.start, until=args.end, seed=args.seed,
                    regime=regime_from_args(args))


def add_commands(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Register ``demo``."""
    demo = commands.add_parser("demo", parents=[common], help="the main job, end to end, on the synthetic market")
    demo.add_argument("--symbols", type=symbols, default=["BTC/USDT", "ETH/USDT", "SOL/USDT", "BNB/USDT", "XRP/USDT"])
    add_time_range(demo, "first bar of the synthetic market", "end of the synthetic market",
                   start_default=utc("2024-01-01"))
    demo.set_defaults(end=utc("2025-01-01"))
    demo.add_argument("--seed", type=count(0), default=7)
    add_regime(demo, at_help="the market's regime switch, the model trained before it, streamed and monitored "
               "after it (default: 2 days before --end)", volatility=3.0, drift=-0.02)
    demo.set_defaults(run=cmd_demo)
