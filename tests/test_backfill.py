"""Backfill: incremental runs equal one full run bit for bit, re-runs change nothing, a changed bar history
is recomputed, ``--start``/``--end`` restrict what is written, versions never mix, and the CLI refuses bad
input with a message and exit code 1 without touching the store. On Bytewax (``--workers``, a cluster of
processes) it writes the files of the single-process backfill.

Every CLI call runs the installed ``featurestore`` script in a subprocess with an explicit ``--store``."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path
from tempfile import TemporaryDirectory

import duckdb
import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from featurestore.backfill import backfill
from featurestore.builtin_views import INDICATORS, RESEARCH
from featurestore.definitions import FeatureView
from featurestore.errors import VersionSkewError
from featurestore.ingest import ingest_bars, ingest_csv, ingest_synthetic
from featurestore.offline import read_features
from featurestore.registry import registered
from featurestore.sources.synthetic import synthetic_bars
from featurestore.store import Store
from streaming.backfill import run_backfill
from streaming.cluster import free_port
from streaming.placement import share

NOW = datetime(2030, 1, 1, tzinfo=UTC)
SYMBOLS = ["BTC/USDT", "ETH/USDT"]
MINUTE = timedelta(minutes=1)
N_BARS = 2_400
SINCE = datetime(2024, 12, 31, 12, 0, tzinfo=UTC)  # 720 bars in 2024, the rest in 2025: two year files
UNTIL = SINCE + N_BARS * MINUTE
VIEWS = (RESEARCH, INDICATORS)
FEATURESTORE = shutil.which("featurestore") or str(Path(sys.executable).parent / "featurestore")


# ---------------------------------------------------------------------------------------------------------
# Helpers


def run_cli(*args: object, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "FEATURESTORE_HOME"}
    return subprocess.run([FEATURESTORE, *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=120, check=False)


def hash_files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(root).rglob("*")) if p.is_file()}


def feature_files(store: Store) -> dict[str, str]:
    return hash_files(store.root / "kind=features")


def stored_rows(store: Store, view: FeatureView, **kwargs) -> pl.DataFrame:
    """Stored rows without ``created_at`` (the one column that legitimately differs between runs)."""
    return read_features(store, view, **kwargs).collect().drop("created_at").sort("symbol", "ts")


def assert_identical(left: pl.DataFrame, right: pl.DataFrame, context: str = "") -> None:
    """Same schema and rows; every Float64 bit for bit (null positions, NaN and -0.0 included)."""
    assert left.schema == right.schema, context
    assert left.height == right.height, f"{context}: {left.height} vs {right.height} rows"
    for name, dtype in left.schema.items():
        if dtype == pl.Float64:
            a, b = left[name], right[name]
            same = (a.is_null().to_numpy() == b.is_null().to_numpy()) & (
                a.fill_null(0.0).to_numpy().view(np.uint64) == b.fill_null(0.0).to_numpy().view(np.uint64))
            assert same.all(), f"{context}: {name} differs first at row {np.flatnonzero(~same)[0]}"
        else:
            assert left[name].equals(right[name]), f"{context}: {name}"


@pytest.fixture(scope="module")
def full_store(tmp_path_factory) -> Store:
    """Every bar ingested at once, each view backfilled once: the reference."""
    store = Store(tmp_path_factory.mktemp("full") / "store")
    ingest_synthetic(store, SYMBOLS, "1m", since=SINCE, until=UNTIL, now=NOW)
    for view in VIEWS:
        report = backfill(store, view, now=NOW, progress=False)
        assert report.rows_written == dict.fromkeys(SYMBOLS, N_BARS)
    return store


def test_full_backfill_is_the_view_computed_over_the_stored_bars(full_store):
    bars = full_store.scan_bars("synthetic", "1m").collect()
    for view in VIEWS:
        expected = pl.concat([view.compute_symbol(bars.filter(pl.col("symbol") == s)) for s in SYMBOLS])
        got = stored_rows(full_store, view)
        assert (got["view_version"] == view.version).all()
        assert_identical(got.drop("view_version"), expected, view.name)
    years = sorted(p.parent.name for p in (full_store.root / "kind=features").rglob("features.parquet"))
    assert years == sorted(["year=2024", "year=2025"] * (len(SYMBOLS) * len(VIEWS)))


def test_stored_rows_read_by_duckdb_are_the_computed_rows_bit_for_bit(full_store):
    bars = full_store.scan_bars("synthetic", "1m").collect()
    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        for view in VIEWS:
            files = [str(path) for path in full_store.feature_files(view.name, view.version)]
            names = ", ".join(["symbol", "ts", *view.feature_names, "created_at", "view_version"])
            got = con.sql(f"SELECT {names} FROM read_parquet({files}, hive_partitioning = true) ORDER BY symbol, ts").pl()
            expected = pl.concat([view.compute_symbol(bars.filter(pl.col("symbol") == s)) for s in SYMBOLS]).with_columns(
                pl.col("ts").cast(pl.Datetime("us", "UTC")), created_at=pl.lit(NOW).cast(pl.Datetime("us", "UTC")),
                view_version=pl.lit(view.version))
            assert_identical(got, expected, view.name)


# ---------------------------------------------------------------------------------------------------------
# Incremental == full


@settings(max_examples=8, deadline=None)
@given(splits=st.lists(st.integers(1, N_BARS - 1), min_size=len(SYMBOLS), max_size=len(SYMBOLS)))
def test_incremental_backfill_equals_full_backfill(full_store, splits):
    with TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "store")
        for symbol, split in zip(SYMBOLS, splits, strict=True):
            ingest_synthetic(store, [symbol], "1m", since=SINCE, until=SINCE + split * MINUTE, now=NOW)
        for view in VIEWS:
            assert backfill(store, view, now=NOW, progress=False).rows_written == dict(zip(SYMBOLS, splits, strict=True))
        ingest_synthetic(store, SYMBOLS, "1m", since=SINCE, until=UNTIL, now=NOW)
        later = NOW + timedelta(days=1)
        for view in VIEWS:
            report = backfill(store, view, now=later, progress=False)
            assert report.rows_written == {s: N_BARS - split for s, split in zip(SYMBOLS, splits, strict=True)}
            assert report.recomputed == []
            assert_identical(stored_rows(store, view), stored_rows(full_store, view), f"{view.name} splits={splits}")
            # the first run's rows were kept as written (not rewritten by the second run)
            created = read_features(store, view).select("symbol", "ts", "created_at").collect()
            assert created.group_by("symbol").agg((pl.col("created_at") == NOW).sum())["created_at"].sort().to_list() \
                == sorted(splits)


def test_second_backfill_writes_nothing_and_leaves_files_byte_identical(tmp_path):
    store = Store(tmp_path / "store")
    ingest_synthetic(store, SYMBOLS, "1m", since=SINCE, until=SINCE + 500 * MINUTE, now=NOW)
    for view in VIEWS:
        backfill(store, view, now=NOW, progress=False)
    before, registry = feature_files(store), hash_files(store.root / "registry")
    for view in VIEWS:
        report = backfill(store, view, now=NOW + timedelta(hours=5), progress=False)
        assert report.rows_written == dict.fromkeys(SYMBOLS, 0)
        assert report.recomputed == []
    assert feature_files(store) == before
    assert hash_files(store.root / "registry") == registry


# ---------------------------------------------------------------------------------------------------------
# A changed bar history is recomputed


def _fresh_full(tmp_path: Path, bars: pl.DataFrame, view: FeatureView) -> pl.DataFrame:
    """Rows of a fresh store holding exactly ``bars``, backfilled once."""
    fresh = Store(tmp_path / "fresh")
    ingest_bars(fresh, bars.drop("exchange", "timeframe"), exchange="synthetic", timeframe="1m", source="test")
    backfill(fresh, view, now=NOW, progress=False)
    return stored_rows(fresh, view)


def _write_csv(path: Path, bars: pl.DataFrame) -> Path:
    bars.select(pl.col("ts").dt.epoch("ms").alias("time"), "open", "high", "low", "close", "volume").write_csv(path)
    return path


def test_gap_filled_later_recomputes_the_symbol(tmp_path):
    """Bars 0..299 and 400..599 first; the gap 300..399 arrives later from a CSV export."""
    store = Store(tmp_path / "store")
    bars = synthetic_bars(SYMBOLS, "1m", since=SINCE, until=SINCE + 600 * MINUTE)
    gap = pl.col("ts").is_between(SINCE + 300 * MINUTE, SINCE + 399 * MINUTE)
    ingest_bars(store, bars.filter(~gap), exchange="synthetic", timeframe="1m", source="test")
    assert backfill(store, RESEARCH, now=NOW, progress=False).rows_written == dict.fromkeys(SYMBOLS, 500)

    csv = _write_csv(tmp_path / "gap.csv", bars.filter(gap & (pl.col("symbol") == "BTC/USDT")))
    assert ingest_csv(store, csv, symbol="BTC/USDT", timeframe="1m", now=NOW, exchange="synthetic") == {"BTC/USDT": 100}
    report = backfill(store, RESEARCH, now=NOW, progress=False)
    assert report.recomputed == ["BTC/USDT"]
    assert report.rows_written == {"BTC/USDT": 600, "ETH/USDT": 0}
    assert_identical(stored_rows(store, RESEARCH), _fresh_full(tmp_path, store.scan_bars("synthetic", "1m").collect(),
                                                               RESEARCH))


def test_range_prepended_later_recomputes_the_symbol(tmp_path):
    """A second synthetic range *before* the first: bars 2024-12-31 12:00..13:39 arrive after 13:40..."""
    store = Store(tmp_path / "store")
    middle = SINCE + 100 * MINUTE
    ingest_synthetic(store, ["BTC/USDT"], "1m", since=middle, until=middle + 400 * MINUTE, now=NOW)
    backfill(store, RESEARCH, now=NOW, progress=False)
    ingest_synthetic(store, ["BTC/USDT"], "1m", since=SINCE, until=middle, now=NOW)
    report = backfill(store, RESEARCH, now=NOW, progress=False)
    assert report.recomputed == ["BTC/USDT"]
    assert_identical(stored_rows(store, RESEARCH), _fresh_full(tmp_path, store.scan_bars("synthetic", "1m").collect(),
                                                               RESEARCH))


# ---------------------------------------------------------------------------------------------------------
# --start / --end


def test_start_end_restrict_the_written_rows_then_a_full_run_completes_them(tmp_path, full_store):
    store = Store(tmp_path / "store")
    ingest_synthetic(store, SYMBOLS, "1m", since=SINCE, until=UNTIL, now=NOW)
    start, end = "2024-12-31T20:00Z", "2025-01-01T03:30"  # an offset and a naive time (UTC)
    done = run_cli("backfill", "--view", "research", "--start", start, "--end", end, "--store", store.root,
                   cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lo, hi = datetime(2024, 12, 31, 20, tzinfo=UTC), datetime(2025, 1, 1, 3, 30, tzinfo=UTC)
    expected_rows = int((hi - lo) / MINUTE)  # rows stamped lo, lo + 1m, ..., hi - 1m
    for symbol in SYMBOLS:
        assert f"research {symbol}: {expected_rows} rows written" in done.stdout
    got = stored_rows(store, RESEARCH)
    assert got["ts"].min() == lo and got["ts"].max() == hi - MINUTE
    reference = stored_rows(full_store, RESEARCH).filter(pl.col("ts").is_between(lo, hi, closed="left"))
    assert_identical(got, reference, "restricted")

    report = backfill(store, RESEARCH, now=NOW, progress=False)
    assert report.recomputed == []
    assert report.rows_written == dict.fromkeys(SYMBOLS, N_BARS - expected_rows)
    assert_identical(stored_rows(store, RESEARCH), stored_rows(full_store, RESEARCH), "completed")


# ---------------------------------------------------------------------------------------------------------
# Version skew


CHANGED_RESEARCH = '''
import polars as pl
from featurestore.builtin_views import RESEARCH
from featurestore.definitions import FeatureView

# Same name as the built-in view, one window changed: a new version of 'research'.
research = FeatureView(
    "research", "1m",
    {**RESEARCH.features, "adv_30": pl.col("volume").rolling_mean(31)},
)
'''


def test_changed_definitions_are_a_new_version_that_never_mixes_with_the_old(tmp_path):
    store = Store(tmp_path / "store")
    ingest_synthetic(store, SYMBOLS, "1m", since=SINCE, until=SINCE + 300 * MINUTE, now=NOW)
    backfill(store, RESEARCH, now=NOW, progress=False)
    old = RESEARCH.version
    definitions = tmp_path / "my_views.py"
    definitions.write_text(textwrap.dedent(CHANGED_RESEARCH))
    changed = FeatureView("research", "1m", {**RESEARCH.features, "adv_30": pl.col("volume").rolling_mean(31)})
    new = changed.version
    assert new != old

    with pytest.raises(VersionSkewError) as info:
        read_features(store, changed)
    assert old in str(info.value) and new in str(info.value)
    assert "featurestore backfill --view research" in str(info.value)
    rows = read_features(store, changed, version=old).collect()
    assert rows.height == 600 and rows["view_version"].unique().to_list() == [old]

    shown = run_cli("features", "show", "research", "--definitions", definitions, "--store", store.root, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert f"version {new}" in shown.stdout and "rolling_mean(volume, window_size=31, min_samples=31)" in shown.stdout
    assert f"registered version {old} at" in shown.stdout

    done = run_cli("backfill", "--view", "research", "--definitions", definitions, "--store", store.root,
                   cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"backfilled view research v{new}" in done.stdout
    assert store.stored_versions("research") == sorted([old, new])
    assert registered(store, "research")["current"] == new

    shown = run_cli("features", "show", "research", "--definitions", definitions, "--store", store.root, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    lines = [line for line in shown.stdout.splitlines() if line.startswith("registered version")]
    assert len(lines) == 2
    assert any(line.startswith(f"registered version {old} at") and "(current)" not in line for line in lines)
    assert any(line.startswith(f"registered version {new} at") and line.endswith("(current)") for line in lines)

    listed = run_cli("features", "list", "--definitions", definitions, "--store", store.root, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    (row,) = [line.split() for line in listed.stdout.splitlines() if line.startswith("research ")]
    assert row[1] == new and row[4] == "600", listed.stdout  # the current version, and its rows stored

    sql = run_cli("sql", "SELECT view_version, count(*) AS n, max(adv_30) AS top FROM features_research "
                  "GROUP BY view_version", "--format", "csv", "--store", store.root, cwd=tmp_path)
    assert sql.returncode == 0, sql.stderr
    result = pl.read_csv(sql.stdout.encode())
    assert result["view_version"].to_list() == [new] and result["n"].to_list() == [600]
    new_rows = read_features(store, changed).collect()
    assert result["top"][0] == new_rows["adv_30"].max()
    # each version still reads its own rows
    assert read_features(store, RESEARCH).collect()["view_version"].unique().to_list() == [old]
    assert new_rows["view_version"].unique().to_list() == [new]


# ---------------------------------------------------------------------------------------------------------
# CLI refusals


@pytest.fixture
def small_store(tmp_path) -> Store:
    store = Store(tmp_path / "store")
    ingest_synthetic(store, SYMBOLS, "1m", since=SINCE, until=SINCE + 60 * MINUTE, now=NOW)
    return store


@pytest.mark.parametrize(("name", "hint"), [("nope", None), ("reserch", "research"), ("indicator", "indicators")])
def test_unknown_view_exits_1_with_the_available_views(tmp_path, small_store, name, hint):
    before = hash_files(small_store.root)
    done = run_cli("backfill", "--view", name, "--store", small_store.root, cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.startswith(f"error: unknown feature view {name!r}")
    assert "(available: daily_trend, indicators, research;" in done.stderr
    if hint:
        assert f"did you mean {hint!r}?" in done.stderr
    assert "Traceback" not in done.stderr
    assert hash_files(small_store.root) == before


def test_unknown_symbol_exits_1_naming_it_and_leaves_the_store_unchanged(tmp_path, small_store):
    backfill(small_store, RESEARCH, now=NOW, progress=False)
    before = hash_files(small_store.root)
    done = run_cli("backfill", "--view", "research", "--symbols", "NOPE/USDT", "--store", small_store.root,
                   cwd=tmp_path)
    assert done.returncode == 1
    assert "error: no stored bars for ['NOPE/USDT']" in done.stderr
    assert "Traceback" not in done.stderr
    assert hash_files(small_store.root) == before
    # with a known symbol alongside, nothing is written either
    done = run_cli("backfill", "--view", "research", "--symbols", "BTC/USDT,NOPE/USDT", "--store", small_store.root,
                   cwd=tmp_path)
    assert done.returncode == 1 and "NOPE/USDT" in done.stderr
    assert hash_files(small_store.root) == before


LOOK_AHEAD_DEFINITIONS = '''
import polars as pl
from featurestore.definitions import FeatureView

peeking = FeatureView("peeking", "1m", {"ok": pl.col("close").shift(1), "next_ret": pl.col("close").shift(-1)})
'''


@pytest.mark.parametrize("command", [("features", "list"), ("features", "show", "peeking"),
                                     ("backfill", "--view", "research")])
def test_look_ahead_definitions_exit_1_with_the_message_and_no_traceback(tmp_path, small_store, command):
    definitions = tmp_path / "peek.py"
    definitions.write_text(textwrap.dedent(LOOK_AHEAD_DEFINITIONS))
    before = hash_files(small_store.root)
    done = run_cli(*command, "--definitions", definitions, "--store", small_store.root, cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip() == (f"error: {definitions}: feature 'next_ret' of view 'peeking': shift(-1) reads 1 "
                                   "bar(s) ahead; use shift(n) with n >= 1")
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert hash_files(small_store.root) == before


# ---------------------------------------------------------------------------------------------------------
# On Bytewax: --workers N and a cluster of processes write what one process writes


def bars_only(full: Store, root: Path) -> Store:
    store = Store(root)
    shutil.copytree(full.root / "kind=bars", root / "kind=bars")
    return store


@pytest.mark.parametrize("workers", [2, 3])  # 3 workers for 2 symbols: one has nothing to do
def test_dataflow_backfill_writes_the_very_files_of_the_single_process_backfill(full_store, tmp_path, workers):
    store = bars_only(full_store, tmp_path / "store")
    reports = run_backfill(store, VIEWS, now=NOW, workers=workers)
    assert [(r.view, r.rows_written, r.bars_read) for r in reports] == [
        (view.name, dict.fromkeys(SYMBOLS, N_BARS), len(SYMBOLS) * N_BARS) for view in VIEWS]
    assert feature_files(store) == feature_files(full_store)  # byte for byte: same rows, same created_at
    assert hash_files(store.root / "registry") == hash_files(full_store.root / "registry")
    assert store.catalog_path.exists()
    again = run_backfill(store, VIEWS, now=NOW + timedelta(hours=1), workers=workers)  # a re-run writes nothing
    assert [r.rows_written for r in again] == [dict.fromkeys(SYMBOLS, 0)] * len(VIEWS)
    assert feature_files(store) == feature_files(full_store)


def test_the_work_is_shared_out_largest_first_to_the_least_loaded_worker():
    work = [("research", f"S{k}", size) for k, size in enumerate([9, 1, 8, 2, 7, 3, 5, 5])]
    shares = share(work, 3)
    assert sorted(pair for share in shares for pair in share) == sorted((v, s) for v, s, _ in work)  # each once
    loads = [sum(size for v, s, size in work if (v, s) in share) for share in shares]
    assert max(loads) - min(loads) <= 3 and share(work[::-1], 3) == shares  # balanced, and the same on every process


def start_processes(commands: list[list[object]], cwd: Path) -> list[tuple[int, str, str]]:
    """Start every command at once; (exit code, stdout, stderr) of each."""
    env = {k: v for k, v in os.environ.items() if k != "FEATURESTORE_HOME"}
    processes = [subprocess.Popen([FEATURESTORE, *map(str, command)], cwd=cwd, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for command in commands]
    return [(process.wait(timeout=120), *process.communicate()) for process in processes]


def test_backfill_processes_given_different_symbols_stop_naming_them_and_write_nothing(small_store, tmp_path):
    addresses = f"127.0.0.1:{free_port()};127.0.0.1:{free_port()}"
    before = hash_files(small_store.root)
    ran = start_processes([["backfill", "--view", "research", "--store", small_store.root, "--process-id", i,
                            "--addresses", addresses, *(["--symbols", "BTC/USDT"] if i else [])] for i in (0, 1)],
                          tmp_path)
    for code, _, err in ran:
        assert code == 1 and "symbols is None on process 0 but ['BTC/USDT'] on process 1" in err, err
    assert not (small_store.root / "kind=features").exists()
    assert hash_files(small_store.root) == before


@pytest.mark.slow
def test_cli_backfill_with_workers_and_with_two_processes_equals_the_plain_backfill(full_store, tmp_path):
    runs = {name: bars_only(full_store, tmp_path / name / "store") for name in ("plain", "workers", "cluster")}
    views = ",".join(view.name for view in VIEWS)
    done = run_cli("backfill", "--view", views, "--store", runs["plain"].root, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    done = run_cli("backfill", "--view", views, "--workers", "2", "--store", runs["workers"].root, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("rows written") == len(VIEWS) * (len(SYMBOLS) + 1)
    addresses = f"127.0.0.1:{free_port()};127.0.0.1:{free_port()}"
    ran = start_processes([["backfill", "--view", views, "--store", runs["cluster"].root, "--process-id", i,
                            "--addresses", addresses] for i in (0, 1)], tmp_path)
    assert [code for code, _, _ in ran] == [0, 0], ran
    assert sorted(line for _, out, _ in ran for line in out.splitlines() if line.startswith("research ")) == [
        f"research {symbol}: {N_BARS} rows written" for symbol in SYMBOLS]  # each symbol by one process
    for view in VIEWS:
        expected = stored_rows(runs["plain"], view)
        for name in ("workers", "cluster"):
            assert_identical(stored_rows(runs[name], view), expected, f"{name} {view.name}")
            created = read_features(runs[name], view).select("created_at").unique().collect()
            assert created.height == 1, f"{name}: one moment for the whole run (process 0's in a cluster)"
