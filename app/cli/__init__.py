"""The ``featurestore`` command line (``app.cli.main``), one module per group of commands."""

from app.cli.main import main

__all__ = ["main"]
