"""The ``featurestore`` command line. Every command works on one store directory:
``--store DIR``, else ``$FEATURESTORE_HOME``, else ``./store``.

Run ``featurestore --help`` or ``featurestore <command> --help``. Each group of commands lives in its own
module of ``app.cli``; heavy libraries (Bytewax, LightGBM, onnxruntime, ccxt) are imported inside the
command functions only.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from app.cli import bars, demo, features, serving, streaming, training
from app.cli.options import common_options
from featurestore.errors import FeatureStoreError
from featurestore.store import Store, default_store_root

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    common = common_options()
    parser = argparse.ArgumentParser(prog="featurestore", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in (bars, features, demo, training, streaming, serving):
        group.add_commands(commands, common)
    return parser


def main(argv: Sequence[str] | None = None, *, now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> int:
    """Entry point; returns the exit code (0 ok, 1 a user-facing error, 2 bad usage)."""
    args = _parser().parse_args(argv)
    store = Store(default_store_root(args.store))
    try:
        return args.run(args, store, now())
    except FeatureStoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
