"""The ``featurestore`` command line. Every command works on one store directory:
``--store DIR`` (before or after the command), else ``$FEATURESTORE_HOME``, else ``./store``.

Run ``featurestore --help`` or ``featurestore <command> --help``. Each group of commands lives in its own
module of ``app.cli`` and calls the SDK (``app.sdk.FeatureStore``); heavy libraries (Bytewax, LightGBM,
onnxruntime, ccxt) are imported inside the command functions only.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from app.cli import demo, features, monitoring, serving, store, streaming, training
from app.cli.options import HelpFormatter, check_ranges, common_options
from app.sdk import FeatureStore
from featurestore.errors import FeatureStoreError

__all__ = ["main"]


def _version() -> str:
    try:
        return version("featurestore")
    except PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="featurestore", description=__doc__.splitlines()[0],
                                     formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"featurestore {_version()}")
    parser.add_argument("--store", type=Path, default=None,
                        help="store directory (default: $FEATURESTORE_HOME, else ./store)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = common_options()
    for group in (store, features, demo, training, streaming, serving, monitoring):
        group.add_commands(commands, common)
    for command in commands.choices.values():
        command.formatter_class = HelpFormatter
    return parser


def main(argv: Sequence[str] | None = None, *, now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> int:
    """Entry point; returns the exit code (0 ok, 1 a user-facing error, 2 bad usage)."""
    parser = _parser()
    args = parser.parse_args(argv)
    check_ranges(parser, args)
    try:
        moment = now()
        return args.run(args, FeatureStore(args.store, clock=lambda: moment))
    except FeatureStoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
