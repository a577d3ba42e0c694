"""Shared test helpers: a small synthetic store, a byte-level snapshot of a directory, and the real CLI.

The CLI is always run as the installed console script in a subprocess (what a user types), with
``--store`` given explicitly and a scratch working directory, so no test can touch ``./store``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fixtures.monitored import build_monitored

from featurestore import FeatureStore
from featurestore.ingest import ingest_synthetic
from featurestore.store import Store

FEATURESTORE = shutil.which("featurestore") or str(Path(sys.executable).parent / "featurestore")

# A clock far after every bar the tests generate, so "closed bars only" never trims test data by accident.
NOW = datetime(2030, 1, 1, tzinfo=UTC)
SYMBOLS = ["BTC/USDT", "ETH/USDT", "BTC/USDT:USDT"]
SINCE = datetime(2024, 1, 1, tzinfo=UTC)
UNTIL = datetime(2024, 1, 8, tzinfo=UTC)  # one week of 1h bars: 168 per symbol


def hash_files(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (hidden ones included), keyed by path relative to ``root``."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(Path(root).rglob("*"))
        if path.is_file()
    }


def run_featurestore(*args: str | os.PathLike, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "FEATURESTORE_HOME"}
    return subprocess.run([FEATURESTORE, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd, env=env, check=False)


@pytest.fixture(scope="session")
def hash_tree() -> Callable[[Path], dict[str, str]]:
    """``hash_tree(dir)`` -> {relative path: sha256} for every file under ``dir``."""
    return hash_files


@pytest.fixture(scope="session")
def featurestore_script() -> str:
    """Path of the installed ``featurestore`` console script (for tests that must control the process)."""
    return FEATURESTORE


@pytest.fixture(scope="session")
def run_cli(tmp_path_factory) -> Callable[..., subprocess.CompletedProcess]:
    """``run_cli("ingest", "--store", d, ...)``: the installed ``featurestore`` script, output captured."""
    scratch = tmp_path_factory.mktemp("cli-cwd")

    def run(*args: str | os.PathLike, timeout: float = 120) -> subprocess.CompletedProcess:
        return run_featurestore(*args, cwd=scratch, timeout=timeout)

    return run


def store_with_bars(root: Path, symbols: list[str], *, until: datetime = UNTIL) -> Store:
    """A store at ``root`` with 1h synthetic bars (seed 7) for ``symbols`` from ``SINCE`` to ``until``."""
    store = Store(root)
    ingest_synthetic(store, symbols, "1h", since=SINCE, until=until, now=NOW, seed=7)
    return store


@pytest.fixture
def synthetic_store(tmp_path) -> Store:
    """A fresh store with one week of 1h synthetic bars (seed 7) for ``SYMBOLS``."""
    return store_with_bars(tmp_path / "store", SYMBOLS)


@pytest.fixture(scope="session")
def monitored(tmp_path_factory) -> FeatureStore:
    """The monitored store (``fixtures.monitored``): a model trained before a regime switch, streamed after it."""
    return build_monitored(tmp_path_factory.mktemp("monitored") / "store")
