"""A store with one damaged file: every verb that touches it names it in a one-line error and changes
nothing; the other series keep working; ``validate`` lists it. Killed writers' temporary files are removed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from conftest import NOW
from featurestore.atomic import PendingFile
from featurestore.backfill import backfill
from featurestore.builtin_views import RESEARCH
from featurestore.ingest import ingest_synthetic
from featurestore.store import BarSeries, Store

SINCE, UNTIL = datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 2, tzinfo=UTC)
RANGE = ("--since", "2024-01-01", "--until", "2024-01-02")


def one_line_error(result: subprocess.CompletedProcess, *details: str) -> None:
    assert result.returncode == 1, result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith("error: ")
    for detail in details:
        assert detail in result.stderr


def damage(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:500])  # a copy cut short: the footer is gone


@pytest.fixture(scope="module")
def damaged(tmp_path_factory) -> tuple[Store, Path]:
    """1m bars of BTC/USDT and ETH/USDT for a day, research backfilled, BTC/USDT's bar file cut short."""
    store = Store(tmp_path_factory.mktemp("damaged") / "store")
    ingest_synthetic(store, ["BTC/USDT", "ETH/USDT"], "1m", since=SINCE, until=UNTIL, now=NOW)
    backfill(store, RESEARCH, now=NOW, progress=False)
    (path,) = store.bar_files(BarSeries("synthetic", "1m", "BTC/USDT"))
    damage(path)
    return store, path


def test_the_verbs_that_touch_a_damaged_file_name_it_and_change_nothing(damaged, run_cli, hash_tree):
    store, path = damaged
    before = hash_tree(store.root)
    for verb in (("validate",), ("sql", "SELECT count(*) FROM bars"), ("sql", "SELECT * FROM bars LIMIT 1"),
                 ("ingest", "--symbols", "BTC/USDT", "--timeframe", "1m", "--since", "2024-01-01", "--until",
                  "2024-01-03"),
                 ("backfill", "--view", "research"),
                 ("export", "--view", "research", "--all-bars", "--label", "future_ret:h=1", "--out", "x.parquet")):
        result = run_cli(*verb, "--store", store.root)
        assert "Traceback" not in result.stderr, verb
        errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        assert result.returncode == 1 and len(errors) == 1, (verb, result.stderr)
        assert f"damaged file {path}" in errors[0] and "move it out of the store" in errors[0], verb
    assert hash_tree(store.root) == before


def test_validate_reports_the_damaged_file_and_checks_the_others(damaged, run_cli):
    store, path = damaged
    result = run_cli("validate", "--store", store.root)
    one_line_error(result, f"damaged file {path}: Parquet magic bytes not found")
    assert "ETH/USDT" in result.stdout and "BTC/USDT" not in result.stdout


def test_the_other_series_keep_working(damaged, run_cli, tmp_path):
    store, _ = damaged
    copy = Store(tmp_path / "store")  # the verbs below write: work on a copy of the damaged store
    subprocess.run(["cp", "-a", str(store.root), str(copy.root)], check=True)
    assert run_cli("sql", "SELECT 1 AS one", "--format", "csv", "--store", copy.root).stdout == "one\n1\n"
    result = run_cli("sql", "SELECT symbol, count(*) AS n FROM bars WHERE symbol <> 'BTC/USDT' GROUP BY 1",
                     "--format", "csv", "--store", copy.root)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "symbol,n\nETH/USDT,1440\n"

    copy.catalog_path.unlink()  # the catalog has to be built again, as after an ingest killed before its refresh
    added = run_cli("ingest", "--symbols", "SOL/USDT", "--timeframe", "1m", *RANGE, "--store", copy.root)
    assert added.returncode == 0, added.stderr
    assert "SOL/USDT: 1440 new bars" in added.stdout
    # The catalog for users' own DuckDB leaves the damaged file out, and says so on one line.
    assert added.stderr.count("\n") == 1 and "leaves out the damaged file" in added.stderr

    result = run_cli("backfill", "--view", "research", "--symbols", "ETH/USDT,SOL/USDT", "--store", copy.root)
    assert result.returncode == 0, result.stderr
    result = run_cli("sql", "SELECT symbol, count(*) AS n FROM features_research GROUP BY 1 ORDER BY 1",
                     "--format", "csv", "--store", copy.root)
    assert result.stdout == "symbol,n\nBTC/USDT,1440\nETH/USDT,1440\nSOL/USDT,1440\n", result.stderr


def test_a_damaged_feature_file_is_named_by_sql_and_backfill(damaged, run_cli, tmp_path, hash_tree):
    store, _ = damaged
    copy = Store(tmp_path / "store")
    subprocess.run(["cp", "-a", str(store.root), str(copy.root)], check=True)
    (path,) = copy.feature_files(RESEARCH.name, RESEARCH.version, "synthetic", ["ETH/USDT"])
    damage(path)
    before = hash_tree(copy.root)
    one_line_error(run_cli("sql", "SELECT count(*) FROM features_research", "--store", copy.root),
                   f"damaged file {path}")
    one_line_error(run_cli("backfill", "--view", "research", "--symbols", "ETH/USDT", "--store", copy.root),
                   f"damaged file {path}")
    assert hash_tree(copy.root) == before


def test_writers_remove_the_temporary_files_of_killed_writers(tmp_path, run_cli):
    store = Store(tmp_path / "store")
    ingest_synthetic(store, ["BTC/USDT"], "1m", since=SINCE, until=UNTIL, now=NOW)
    (target,) = store.bar_files(BarSeries("synthetic", "1m", "BTC/USDT"))
    # A writer that died between creating its temporary file and renaming it (a process that exits).
    subprocess.run([sys.executable, "-c", "import sys, pathlib; from featurestore.atomic import PendingFile; "
                    "PendingFile(pathlib.Path(sys.argv[1]))", str(target)], check=True)
    (dead,) = target.parent.glob(".bars.parquet.*.tmp")
    legacy = target.parent / ".bars.parquet.k2j_8xq1.tmp"  # tempfile.mkstemp's name, from an older version
    legacy.write_bytes(b"x")
    os.utime(legacy, (time.time() - 3 * 86_400,) * 2)
    alive = PendingFile(target)  # this process is still writing it: kept
    elsewhere = target.parent / ".bars.parquet.otherhost.1.0123abcd.tmp"  # another host's writer: kept
    elsewhere.write_bytes(b"x")

    result = run_cli("ingest", "--symbols", "BTC/USDT", "--timeframe", "1m", *RANGE, "--store", store.root)

    assert result.returncode == 0, result.stderr
    assert "0 new bars" in result.stdout  # nothing to write, and still the orphans are gone
    assert not dead.exists() and not legacy.exists()
    assert alive.tmp.exists() and elsewhere.exists()
    alive.discard()
