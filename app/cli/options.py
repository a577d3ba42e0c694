"""Argument types and options every command shares, defined once.

The parsing itself is the foundation's (``featurestore.durations``, ``featurestore.timeframes``); here it is
adapted to argparse, whose type functions must raise ``ArgumentTypeError`` for their message to reach the
user. One spelling per option everywhere: ``--start``/``--end`` for time ranges, ``--view``/``--views`` and
``--symbol``/``--symbols`` (each pair the same option), ``--store`` before or after the command.

>>> utc("2024-01-01T12:00Z").isoformat()
'2024-01-01T12:00:00+00:00'
>>> symbols(" BTC/USDT, ETH/USDT:USDT ")
['BTC/USDT', 'ETH/USDT:USDT']
>>> symbols("BTCUSDT")
Traceback (most recent call last):
...
argparse.ArgumentTypeError: symbol 'BTCUSDT' is not in ccxt's BASE/QUOTE form; did you mean 'BTC/USDT'?
>>> count(1)("0")
Traceback (most recent call last):
...
argparse.ArgumentTypeError: '0' is not a whole number >= 1
>>> number(above=0)("nan")
Traceback (most recent call last):
...
argparse.ArgumentTypeError: 'nan' is not a finite number > 0
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from featurestore.atomic import check_writable
from featurestore.durations import (
    parse_bars_or_duration,
    parse_duration,
    parse_timezone,
    parse_utc,
    parse_view_durations,
)
from featurestore.errors import FeatureStoreError
from featurestore.sources.synthetic import Regime
from featurestore.timeframes import canonical_timeframe

__all__ = ["HelpFormatter", "add_cluster_options", "add_definitions", "add_regime", "add_symbols", "add_time_range",
           "add_views", "bars_or_duration", "check_ranges", "comma_list", "common_options", "count", "directory", "duration", "number",
           "output_file", "regime_from_args", "symbols", "timeframe", "timezone", "utc", "view_durations"]

T = TypeVar("T")
_SYMBOL = re.compile(r"^[A-Z0-9][A-Z0-9._-]*/[A-Z0-9][A-Z0-9._-]*(:[A-Z0-9._-]+)?$")
_SYMBOL_MAX = 64  # longer than any listed market; a partition directory name must stay under 255 bytes
_QUOTES = ("USDT", "USDC", "FDUSD", "BUSD", "TUSD", "USD", "EUR", "GBP", "JPY", "TRY", "BTC", "ETH", "BNB")


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
bars_or_duration = _argument_type(parse_bars_or_duration, "bars_or_duration")
view_durations = _argument_type(parse_view_durations, "view_durations")
timeframe = _argument_type(canonical_timeframe, "timeframe")
timezone = _argument_type(parse_timezone, "timezone")
output_file = _argument_type(lambda text: check_writable(Path(text)), "output_file")  # a file to write


def comma_list(text: str) -> list[str]:
    """``"research, indicators"`` -> ``["research", "indicators"]``; empty is an error."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise argparse.ArgumentTypeError("give at least one, comma-separated, e.g. BTC/USDT,ETH/USDT or research")
    return items


def _symbol_hint(symbol: str) -> str:
    upper = symbol.upper().replace("-", "/").replace("_", "/")
    if _SYMBOL.match(upper):
        return upper
    quote = next((q for q in _QUOTES if upper.endswith(q) and len(upper) > len(q)), None)
    return f"{upper[:-len(quote)]}/{quote}" if quote else ""


def symbols(text: str) -> list[str]:
    """Comma-separated symbols in ccxt's unified form ``BASE/QUOTE[:SETTLE]`` (``BTC/USDT``, ``ETH/USDT:USDT``)."""
    items = comma_list(text)
    for item in items:
        if len(item) > _SYMBOL_MAX:
            raise argparse.ArgumentTypeError(f"symbol {item[:20]}... is {len(item)} characters long; a market symbol "
                                             f"has at most {_SYMBOL_MAX}")
        if not _SYMBOL.match(item):
            hint = _symbol_hint(item)
            raise argparse.ArgumentTypeError(f"symbol {item!r} is not in ccxt's BASE/QUOTE form"
                                             + (f"; did you mean {hint!r}?" if hint else ", e.g. BTC/USDT"))
    return items


def count(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number ``>= minimum``."""

    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= {minimum}")
        return value

    convert.__name__ = f"count >= {minimum}"
    return convert


def number(*, above: float | None = None, at_least: float | None = None) -> Callable[[str], float]:
    """An argparse type: a finite float, ``> above`` and ``>= at_least`` when given."""
    bound = f" > {above:g}" if above is not None else f" >= {at_least:g}" if at_least is not None else ""

    def convert(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if (not math.isfinite(value) or (above is not None and value <= above)
                or (at_least is not None and value < at_least)):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number{bound}")
        return value

    convert.__name__ = f"number{bound}"
    return convert


def directory(text: str) -> Path:
    """An argparse type: a directory, existing or not, that is no file."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a file, not a directory")
    return path


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Help that shows every option's default (when it has one worth showing)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (default not in (None, False, argparse.SUPPRESS) and not isinstance(action, argparse._HelpAction)
                and "%(default)" not in text and "default" not in text):
            shown = ",".join(default) if isinstance(default, list) else default
            text += f" (default: {shown})"
        return text


def common_options() -> argparse.ArgumentParser:
    """The parent parser of every command: ``--store`` (also accepted before the command; given after it,
    it wins, and not given, it leaves the one given before alone)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--store", type=Path, default=argparse.SUPPRESS,
                        help="store directory (default: $FEATURESTORE_HOME, else ./store)")
    return common


def add_symbols(parser: argparse.ArgumentParser, help: str = "comma-separated, e.g. BTC/USDT,ETH/USDT "
                "(default: every stored symbol)", **options: object) -> None:
    parser.add_argument("--symbols", "--symbol", dest="symbols", type=symbols, help=help, **options)


def add_views(parser: argparse.ArgumentParser, *, several: bool, help: str | None = None) -> None:
    """``--view`` / ``--views`` (one option): a comma list where the command takes several views, else one name."""
    if several:
        parser.add_argument("--views", "--view", dest="views", type=comma_list, required=True,
                            help=help or "view name(s), comma-separated (name@version for an older version)")
    else:
        parser.add_argument("--view", "--views", dest="view", required=True, type=_one_view,
                            help=help or "view name (name@version for an older version)")


def _one_view(text: str) -> str:
    names = comma_list(text)
    if len(names) != 1:
        raise argparse.ArgumentTypeError(f"this command takes one view, got {len(names)}: {text!r}")
    return names[0]


def add_time_range(parser: argparse.ArgumentParser, start_help: str, end_help: str | None = None, *,
                   start_default: object = None) -> None:
    """``--start`` (and ``--end`` where the command has an end), UTC; the older spellings ``--since``/``--from``
    and ``--until`` still work."""
    parser.add_argument("--start", type=utc, help=start_help, default=start_default)
    parser.add_argument("--since", "--from", dest="start", type=utc, help=argparse.SUPPRESS)
    if end_help is not None:
        parser.add_argument("--end", type=utc, help=end_help)
        parser.add_argument("--until", dest="end", type=utc, help=argparse.SUPPRESS)


def check_ranges(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse an empty or reversed time range before any work starts."""
    start, end = getattr(args, "start", None), getattr(args, "end", None)
    if start is not None and end is not None and end <= start:
        parser.error(f"--end {end.isoformat()} is not after --start {start.isoformat()}")


def add_definitions(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--definitions", type=Path,
                        help="a Python file defining FeatureView objects (applied to the store first)")


def add_cluster_options(parser: argparse.ArgumentParser) -> None:
    """``--workers`` and the flags of a multi-process run (``stream``, ``backfill``)."""
    parser.add_argument("--workers", type=count(1), default=1, help="worker threads in this process")
    parser.add_argument("--process-id", type=count(0), help="cluster: this process's index in --addresses")
    parser.add_argument("--addresses", type=lambda text: text.split(";"),
                        help='cluster: "host:port;host:port;..." of every process, the same on every process')
    parser.add_argument("--join-timeout", type=number(above=0), default=120.0,
                        help="cluster: seconds to wait for every process to start")


def add_regime(parser: argparse.ArgumentParser, *, at_help: str = "synthetic market: switch regime at this time",
               volatility: float = 1.0, drift: float = 0.0) -> None:
    """``--regime-at``, ``--regime-volatility`` and ``--regime-drift``: the synthetic market's regime switch."""
    parser.add_argument("--regime-at", type=utc, help=at_help)
    parser.add_argument("--regime-volatility", type=number(above=0), default=volatility,
                        help="volatility multiplier from --regime-at on")
    parser.add_argument("--regime-drift", type=number(), default=drift,
                        help="log return per day added from --regime-at on (e.g. -0.02)")


def regime_from_args(args: argparse.Namespace) -> Regime | None:
    """The ``Regime`` the regime options give (None without ``--regime-at``)."""
    if args.regime_at is None:
        return None
    return Regime(args.regime_at, volatility=args.regime_volatility, drift=args.regime_drift)
