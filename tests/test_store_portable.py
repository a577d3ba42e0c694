"""A store other tools can read and other users can share: the bar and feature files and the stream's row
log read alike with pyarrow's hive datasets, pandas, DuckDB and polars; files and directories get the umask's permissions;
files written before the partition keys moved out of them still read, and are rewritten without them.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import duckdb
import pandas as pd
import polars as pl
import pyarrow.dataset as ds
import pytest
from polars.testing import assert_frame_equal

from featurestore.builtin_views import RESEARCH
from featurestore.offline import read_features
from featurestore.store import BarSeries, Store
from streaming.sinks import scan_parts

# A day of 1m bars across a year boundary: two year partitions per symbol.
INGEST = ("ingest", "--symbols", "BTC/USDT,ETH/USDT", "--timeframe", "1m", "--since", "2023-12-31T12:00",
          "--until", "2024-01-01T12:00")


def _pyarrow(directory: Path) -> pl.DataFrame:
    return pl.from_arrow(ds.dataset(directory, partitioning="hive").to_table())


def _pandas(directory: Path) -> pl.DataFrame:
    frame = pd.read_parquet(directory)  # the partition keys come back as categoricals
    return pl.from_pandas(frame.astype({c: str for c in frame.columns if isinstance(frame[c].dtype, pd.CategoricalDtype)}))


def _duckdb(directory: Path) -> pl.DataFrame:
    return duckdb.sql(f"SELECT * FROM read_parquet('{directory}/**/*.parquet', hive_partitioning = true)").pl()


def _polars(directory: Path) -> pl.DataFrame:
    return pl.scan_parquet(directory, hive_partitioning=True).collect()


READERS: dict[str, Callable[[Path], pl.DataFrame]] = {
    "pyarrow.dataset": _pyarrow, "pandas.read_parquet": _pandas, "duckdb": _duckdb, "polars": _polars}


@pytest.fixture(scope="module")
def store(tmp_path_factory, run_cli) -> Store:
    root = tmp_path_factory.mktemp("portable") / "store"
    for args in (INGEST, ("backfill", "--view", "research"), ("stream", "--source", "replay", "--view", "research")):
        done = run_cli(*args, "--store", root)
        assert done.returncode == 0, done.stderr
    return Store(root)


def as_read(got: pl.DataFrame, expected: pl.DataFrame) -> pl.DataFrame:
    """``got``'s columns of ``expected``, sorted, with timestamps in ``expected``'s unit and zone (DuckDB
    hands back microseconds in Etc/UTC)."""
    return got.select(expected.columns).with_columns(
        pl.col(name).dt.convert_time_zone("UTC").cast(dtype)
        for name, dtype in expected.schema.items() if isinstance(dtype, pl.Datetime)).sort("symbol", "ts")


@pytest.mark.parametrize("reader", list(READERS))
def test_bars_read_alike_with_every_hive_reader(store, reader):
    expected = store.scan_bars("synthetic", "1m").collect().sort("symbol", "ts")
    got = READERS[reader](store.bars_root)
    assert sorted(got["symbol"].unique()) == ["BTC/USDT", "ETH/USDT"]
    assert sorted(got["year"].cast(pl.Int64).unique()) == [2023, 2024]
    assert_frame_equal(as_read(got, expected), expected, check_exact=True)


@pytest.mark.parametrize("reader", list(READERS))
def test_features_read_alike_with_every_hive_reader(store, reader):
    expected = read_features(store, RESEARCH).collect().sort("symbol", "ts")
    got = READERS[reader](store.view_dir("research"))
    assert got["version"].cast(pl.String).unique().to_list() == [RESEARCH.version]
    assert_frame_equal(as_read(got, expected), expected, check_exact=True)


@pytest.mark.parametrize("reader", list(READERS))
def test_the_row_log_reads_alike_with_every_hive_reader(store, reader):
    expected = scan_parts(store, RESEARCH).collect().sort("symbol", "ts")
    assert expected.height == 2 * 1440
    got = READERS[reader](store.root / "kind=stream")
    assert_frame_equal(as_read(got, expected), expected, check_exact=True)


def test_consistency_reads_the_row_log(store, run_cli):
    done = run_cli("consistency", "--view", "research", "--store", store.root)
    assert done.returncode == 0, done.stderr
    assert "CONSISTENT" in done.stdout and "2,880 rows served" in done.stdout


def modes(root: Path) -> set[tuple[str, int]]:
    return {("dir" if path.is_dir() else "file", stat.S_IMODE(path.stat().st_mode)) for path in root.rglob("*")}


@pytest.mark.parametrize("umask", [0o002, 0o077])
def test_files_and_directories_get_the_umask_permissions(tmp_path, run_cli, umask):
    root = tmp_path / "store"
    previous = os.umask(umask)  # the CLI's process inherits it
    try:
        for args in (INGEST, ("backfill", "--view", "research"), ("sql", "SELECT 1")):
            done = run_cli(*args, "--store", root)
            assert done.returncode == 0, done.stderr
    finally:
        os.umask(previous)
    assert modes(root) == {("dir", 0o777 & ~umask), ("file", 0o666 & ~umask)}


def test_files_holding_their_partition_keys_still_read_and_are_rewritten_without(store, run_cli, tmp_path):
    # A store written before the keys left the files: every file holds them as columns too.
    old = Store(tmp_path / "store")
    done = run_cli(*INGEST, "--store", old.root)
    assert done.returncode == 0, done.stderr
    series = BarSeries("synthetic", "1m", "BTC/USDT")
    files = old.bar_files(series)
    for path in files:
        pl.read_parquet(path).select(pl.lit("synthetic").alias("exchange"), pl.lit("1m").alias("timeframe"),
                                     pl.lit("BTC/USDT").alias("symbol"), pl.all()).write_parquet(path)
    expected = store.scan_bars("synthetic", "1m").collect()
    assert_frame_equal(old.scan_bars("synthetic", "1m").collect(), expected, check_exact=True)
    counted = run_cli("sql", "SELECT symbol, count(*) AS n FROM bars GROUP BY 1 ORDER BY 1", "--format", "csv",
                      "--store", old.root)
    assert counted.stdout == "symbol,n\nBTC/USDT,1440\nETH/USDT,1440\n", counted.stderr

    done = run_cli(*INGEST[:-1], "2024-01-01T13:00", "--store", old.root)  # an hour more
    assert done.returncode == 0 and "BTC/USDT: 60 new bars" in done.stdout, done.stderr  # ETH/USDT too
    assert "symbol" in pl.read_parquet_schema(files[1])  # 2024: the new bars appended beside it, as a delta file
    assert [path.name for path in old.bar_files(series)][2].startswith("delta-")
    assert old.scan_series(series).collect().height == 1440 + 60
    done = run_cli("compact", "--store", old.root)
    assert done.returncode == 0 and "BTC/USDT: 1 delta file(s) folded" in done.stdout, done.stderr
    assert "symbol" in pl.read_parquet_schema(files[0])  # 2023: nothing new, left as it was
    assert "symbol" not in pl.read_parquet_schema(files[1])  # 2024: rewritten with the new bars
    assert old.bar_files(series) == files
    assert old.scan_series(series).collect().height == 1440 + 60
