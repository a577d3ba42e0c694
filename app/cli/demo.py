"""The ``demo`` command: the main job, end to end, on the synthetic market (``app.demo``)."""

from __future__ import annotations

import argparse

from app.cli.options import comma_list, utc
from app.sdk import FeatureStore

__all__ = ["add_commands"]


def cmd_demo(args: argparse.Namespace, fs: FeatureStore) -> int:
    store, now = fs.store, fs.clock()
    from app.demo import run_demo

    return run_demo(store, now=now, symbols=args.symbols, since=args.since, until=args.until, seed=args.seed)


def add_commands(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Register ``demo``."""
    demo = commands.add_parser("demo", parents=[common], help="the main job, end to end, on the synthetic market")
    demo.add_argument("--symbols", type=comma_list, default=["BTC/USDT", "ETH/USDT", "SOL/USDT", "BNB/USDT", "XRP/USDT"])
    demo.add_argument("--since", type=utc, default=utc("2024-01-01"))
    demo.add_argument("--until", type=utc, default=utc("2025-01-01"))
    demo.add_argument("--seed", type=int, default=7)
    demo.set_defaults(run=cmd_demo)
