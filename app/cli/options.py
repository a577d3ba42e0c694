"""Argument types and options every command shares, defined once.

The parsing itself is the foundation's (``featurestore.durations``); here it is adapted to argparse,
whose type functions must raise ``ArgumentTypeError`` for their message to reach the user.

>>> utc("2024-01-01T12:00Z").isoformat()
'2024-01-01T12:00:00+00:00'
>>> comma_list(" BTC/USDT, ETH/USDT ")
['BTC/USDT', 'ETH/USDT']
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from featurestore.durations import parse_duration, parse_utc, parse_view_durations
from featurestore.errors import FeatureStoreError

__all__ = ["add_definitions", "add_symbols", "comma_list", "common_options", "duration", "utc", "view_durations"]

T = TypeVar("T")


def _argument_type(parse: Callable[[str], T], name: str) -> Callable[[str], T]:
    """``parse`` as an argparse type: a ``FeatureStoreError`` becomes the usage error it reports."""

    def convert(text: str) -> T:
        try:
            return parse(text)
        except FeatureStoreError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = name
    return convert


utc = _argument_type(parse_utc, "utc")
duration = _argument_type(parse_duration, "duration")
view_durations = _argument_type(parse_view_durations, "view_durations")


def comma_list(text: str) -> list[str]:
    """``"BTC/USDT, ETH/USDT"`` -> ``["BTC/USDT", "ETH/USDT"]``; empty is an error."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise argparse.ArgumentTypeError("give at least one, comma-separated, e.g. BTC/USDT,ETH/USDT or research")
    return items


def common_options() -> argparse.ArgumentParser:
    """The parent parser of every command: ``--store`` (also accepted before the command; given after it,
    it wins, and not given, it leaves the one given before alone)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--store", type=Path, default=argparse.SUPPRESS,
                        help="store directory (default: $FEATURESTORE_HOME, else ./store)")
    return common


def add_symbols(parser: argparse.ArgumentParser, help: str = "comma-separated (default: every stored symbol)",
                **options: object) -> None:
    parser.add_argument("--symbols", type=comma_list, help=help, **options)


def add_definitions(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--definitions", type=Path, help="a Python file defining FeatureView objects")
