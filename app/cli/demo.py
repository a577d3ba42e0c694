"""The ``demo`` command: the main job, end to end, on the synthetic market (``app.demo``)."""

from __future__ import annotations

import argparse

from app.cli.options import add_time_range, symbols, utc
from app.sdk import FeatureStore

__all__ = ["add_commands"]


def cmd_demo(args: argparse.Namespace, fs: FeatureStore) -> int:
    store, now = fs.store, fs.clock()
    from app.demo import run_demo

    return run_demo(store, now=now, symbols=args.symbols, since=args.start, until=args.end, seed=args.seed)


def add_commands(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Register ``demo``."""
    demo = commands.add_parser("demo", parents=[common], help="the main job, end to end, on the synthetic market")
    demo.add_argument("--symbols", type=symbols, default=["BTC/USDT", "ETH/USDT", "SOL/USDT", "BNB/USDT", "XRP/USDT"])
    add_time_range(demo, "first bar of the synthetic market", "end of the synthetic market",
                   start_default=utc("2024-01-01"))
    demo.set_defaults(end=utc("2025-01-01"))
    demo.add_argument("--seed", type=int, default=7)
    demo.set_defaults(run=cmd_demo)
