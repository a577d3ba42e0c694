"""The parquet store: round trips, idempotent merges, conflict refusal, year files, and killed writers."""

from __future__ import annotations

import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from featurestore.bars import BAR_COLUMNS, TS_DTYPE, validate_bars
from featurestore.errors import StoreConflictError
from featurestore.ingest import ingest_bars, ingest_synthetic
from featurestore.sources.synthetic import synthetic_bars
from featurestore.sql import run_sql
from featurestore.store import Store

NOW = datetime(2030, 1, 1, tzinfo=UTC)
SYMBOLS = ["BTC/USDT", "ETH/USDT", "BTC/USDT:USDT"]
SINCE, UNTIL = datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 8, tzinfo=UTC)
STORED_SCHEMA = pl.Schema({"exchange": pl.String, "timeframe": pl.String, "symbol": pl.String, "ts": TS_DTYPE,
                           **dict.fromkeys(("open", "high", "low", "close", "volume"), pl.Float64)})


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def as_stored(bars: pl.DataFrame, exchange: str, timeframe: str) -> pl.DataFrame:
    return bars.select(pl.lit(exchange).alias("exchange"), pl.lit(timeframe).alias("timeframe"), *BAR_COLUMNS)


def stored_bars(store: Store, exchange: str = "synthetic", timeframe: str = "1h") -> pl.DataFrame:
    return store.scan_bars(exchange, timeframe).collect()


def bar_files(root: Path) -> list[Path]:
    """What a reader's ``kind=bars/**/*.parquet`` glob sees."""
    return sorted(Path(root).glob("kind=bars/**/*.parquet"))


# ---------------------------------------------------------------------------------------------------------
# Round trip


def test_write_read_round_trip_is_exact(tmp_path):
    store = Store(tmp_path / "store")
    bars = synthetic_bars(SYMBOLS, "1h", since=SINCE, until=UNTIL)

    assert ingest_bars(store, bars, exchange="binance", timeframe="1h", source="test") == dict.fromkeys(SYMBOLS, 168)

    got = stored_bars(store, "binance")
    assert got.schema == STORED_SCHEMA
    # scan_bars returns the rows sorted by (symbol, ts), values bit for bit as they went in.
    assert_frame_equal(got, as_stored(bars, "binance", "1h").sort("symbol", "ts"), check_exact=True)
    assert [p.relative_to(store.root).as_posix() for p in bar_files(store.root)] == [
        f"kind=bars/exchange=binance/timeframe=1h/symbol={quoted}/year=2024/bars.parquet"
        for quoted in ("BTC%2FUSDT", "BTC%2FUSDT%3AUSDT", "ETH%2FUSDT")
    ]
    # Each file is sorted by ts and holds the bars' values; the partition keys live in its path only.
    for path in bar_files(store.root):
        frame = pl.read_parquet(path, hive_partitioning=False)
        assert frame["ts"].is_sorted() and frame["ts"].n_unique() == frame.height
        assert frame.columns == list(BAR_COLUMNS[1:])
    # Only the lock file is hidden: no temporary file is left behind by a completed write.
    hidden = [p.name for p in store.root.rglob(".*")]
    assert hidden == [".write.lock"]


# ---------------------------------------------------------------------------------------------------------
# Idempotence and extension


def test_reingesting_stored_bars_changes_no_file(synthetic_store, hash_tree):
    before = hash_tree(synthetic_store.root)
    rows = stored_bars(synthetic_store).height

    again = ingest_synthetic(synthetic_store, SYMBOLS, "1h", since=SINCE, until=UNTIL, now=NOW)

    assert again == dict.fromkeys(SYMBOLS, 0)
    assert stored_bars(synthetic_store).height == rows
    assert hash_tree(synthetic_store.root) == before


def test_cli_reingest_prints_zero_new_bars_and_changes_no_file(tmp_path, run_cli, hash_tree):
    args = ["ingest", "--source", "synthetic", "--symbols", "BTC/USDT,ETH/USDT", "--timeframe", "1h",
            "--since", "2024-01-01", "--until", "2024-01-15", "--store", tmp_path / "store"]
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    assert "BTC/USDT: 336 new bars" in first.stdout and "stored 672 new bars" in first.stdout
    before = hash_tree(tmp_path / "store")

    second = run_cli(*args)

    assert second.returncode == 0, second.stderr
    assert "BTC/USDT: 0 new bars" in second.stdout and "ETH/USDT: 0 new bars" in second.stdout
    assert "stored 0 new bars" in second.stdout
    assert hash_tree(tmp_path / "store") == before


def test_extending_the_range_appends_only_new_rows(tmp_path, hash_tree):
    store = Store(tmp_path / "store")
    full = synthetic_bars(["BTC/USDT", "ETH/USDT"], "1h", since=utc(2023, 12, 25), until=utc(2024, 1, 15))
    upto = {cut: full.filter(pl.col("ts") < cut) for cut in (utc(2024, 1, 1), utc(2024, 1, 8))}

    assert ingest_bars(store, upto[utc(2024, 1, 1)], exchange="x", timeframe="1h", source="t") == {
        "BTC/USDT": 168, "ETH/USDT": 168}
    year_2023 = {path: digest for path, digest in hash_tree(store.root).items() if "year=2023" in path}
    assert len(year_2023) == 2

    # The whole range again: only the bars after the stored ones are new, and the 2023 files are not rewritten.
    assert ingest_bars(store, upto[utc(2024, 1, 8)], exchange="x", timeframe="1h", source="t") == {
        "BTC/USDT": 168, "ETH/USDT": 168}
    assert ingest_bars(store, full, exchange="x", timeframe="1h", source="t") == {"BTC/USDT": 168, "ETH/USDT": 168}
    after = hash_tree(store.root)
    assert {path: after[path] for path in year_2023} == year_2023
    assert_frame_equal(stored_bars(store, "x"), as_stored(full, "x", "1h"), check_exact=True)


@pytest.mark.parametrize(("timeframe", "short", "long"), [
    ("1h", utc(2024, 1, 3), utc(2024, 1, 10)),
    ("1m", utc(2024, 2, 10), utc(2024, 2, 20)),  # 1m: the longer run crosses the 65,536-bar block boundary
], ids=["1h", "1m-across-a-block"])
def test_a_longer_until_reproduces_the_earlier_bars_exactly(timeframe, short, long):
    earlier = synthetic_bars(["BTC/USDT"], timeframe, since=SINCE, until=short)
    later = synthetic_bars(["BTC/USDT"], timeframe, since=SINCE, until=long)
    assert later.height > earlier.height
    assert_frame_equal(later.head(earlier.height), earlier, check_exact=True)


def test_extending_a_synthetic_series_appends_the_new_bars(tmp_path):
    store = Store(tmp_path / "store")
    assert ingest_synthetic(store, ["BTC/USDT"], "1h", since=SINCE, until=utc(2024, 1, 3), now=NOW) == {"BTC/USDT": 48}
    before = stored_bars(store)

    assert ingest_synthetic(store, ["BTC/USDT"], "1h", since=SINCE, until=utc(2024, 1, 5), now=NOW) == {"BTC/USDT": 48}
    assert_frame_equal(stored_bars(store).head(before.height), before, check_exact=True)


# ---------------------------------------------------------------------------------------------------------
# Conflicts


@pytest.mark.parametrize("conflict_first", [False, True], ids=["good-symbol-first", "conflict-first"])
def test_a_conflicting_bar_is_refused_and_nothing_is_written(synthetic_store, hash_tree, conflict_first):
    stored = stored_bars(synthetic_store)
    eth = stored.filter(pl.col("symbol") == "ETH/USDT").select(BAR_COLUMNS)
    row = 30
    bad_ts, old_close = eth["ts"][row], eth["close"][row]
    new_close = (eth["low"][row] + eth["high"][row]) / 2  # still a valid bar: only the store can object
    assert new_close != old_close
    eth = eth.with_columns(close=pl.when(pl.int_range(pl.len()) == row).then(new_close).otherwise("close"))
    btc_next_day = synthetic_bars(["BTC/USDT"], "1h", since=UNTIL, until=UNTIL + timedelta(days=1))
    batch = pl.concat([eth, btc_next_day] if conflict_first else [btc_next_day, eth])
    before = hash_tree(synthetic_store.root)

    with pytest.raises(StoreConflictError) as caught:
        ingest_bars(synthetic_store, batch, exchange="synthetic", timeframe="1h", source="test")

    message = str(caught.value)
    assert "1 incoming bar(s) disagree" in message
    assert f"symbol ETH/USDT, ts {bad_ts}" in message
    assert f"close: stored {old_close} vs incoming {new_close}" in message
    assert "open:" not in message and "volume:" not in message  # only the field that differs is named
    assert "Nothing was written" in message
    assert hash_tree(synthetic_store.root) == before
    assert_frame_equal(stored_bars(synthetic_store), stored)


def test_a_conflict_in_a_later_year_file_blocks_the_earlier_year_too(tmp_path, hash_tree):
    store = Store(tmp_path / "store")
    bars = synthetic_bars(["BTC/USDT"], "1h", since=utc(2023, 12, 31), until=utc(2024, 1, 2))
    ingest_bars(store, bars.filter(pl.col("ts") >= utc(2024, 1, 1)), exchange="x", timeframe="1h", source="t")
    before = hash_tree(store.root)
    changed = bars.with_columns(volume=pl.when(pl.col("ts") == utc(2024, 1, 1, 5)).then(pl.col("volume") + 1)
                                .otherwise("volume"))

    with pytest.raises(StoreConflictError, match=r"ts 2024-01-01 05:00:00\+00:00 \(volume: stored"):
        ingest_bars(store, changed, exchange="x", timeframe="1h", source="t")

    assert hash_tree(store.root) == before
    assert not (store.series_dir(store.series()[0]) / "year=2023").exists()


def test_cli_conflict_is_a_clean_error_and_writes_nothing(synthetic_store, run_cli, hash_tree):
    before = hash_tree(synthetic_store.root)
    result = run_cli("ingest", "--source", "synthetic", "--symbols", "ETH/USDT", "--timeframe", "1h",
                     "--since", "2024-01-01", "--until", "2024-01-08", "--seed", "8", "--store", synthetic_store.root)
    assert result.returncode == 1
    assert result.stderr.startswith("error: ")
    assert "disagree with stored bars" in result.stderr and "symbol ETH/USDT" in result.stderr
    assert "Nothing was written" in result.stderr
    assert "Traceback" not in result.stderr
    assert hash_tree(synthetic_store.root) == before


# ---------------------------------------------------------------------------------------------------------
# Year files


def test_bars_spanning_a_year_boundary_land_in_two_year_files(tmp_path):
    store = Store(tmp_path / "store")
    bars = synthetic_bars(["BTC/USDT:USDT"], "1h", since=utc(2023, 12, 31, 20), until=utc(2024, 1, 1, 5))
    assert bars.height == 9

    assert ingest_bars(store, bars, exchange="x", timeframe="1h", source="t") == {"BTC/USDT:USDT": 9}

    (series,) = store.series()
    files = store.bar_files(series)
    assert [f.parent.name for f in files] == ["year=2023", "year=2024"]
    parts = [pl.read_parquet(f, hive_partitioning=False) for f in files]
    assert [p.height for p in parts] == [4, 5]
    assert [p["ts"].dt.year().unique().to_list() for p in parts] == [[2023], [2024]]
    assert store.last_bar_ts(series) == utc(2024, 1, 1, 4)
    assert_frame_equal(stored_bars(store, "x"), as_stored(bars, "x", "1h"), check_exact=True)


# ---------------------------------------------------------------------------------------------------------
# A killed writer


KILLED_ARGS = ["ingest", "--source", "synthetic", "--symbols", "BTC/USDT,ETH/USDT", "--timeframe", "1m",
               "--since", "2023-11-01", "--until", "2024-03-01"]  # 4 files of 1m bars (2 symbols x 2 years)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Store:
    """The store an uninterrupted run of ``KILLED_ARGS`` produces (the CLI defaults to seed 7)."""
    store = Store(tmp_path_factory.mktemp("uninterrupted") / "store")
    ingest_synthetic(store, ["BTC/USDT", "ETH/USDT"], "1m", since=utc(2023, 11, 1), until=utc(2024, 3, 1), now=NOW)
    return store


# The CLI in a subprocess that SIGKILLs itself at the n-th audit event ``event`` on a bar file: a crash at an
# exact point of the write path (Python raises the event just before the operation), not at a moment in time.
KILL_AT = """
import os, signal, sys
event, nth = sys.argv[1], int(sys.argv[2])
seen = 0
def hook(name, args):
    global seen
    if name == event and "bars.parquet" in str(args[0]):
        seen += 1
        if seen == nth:
            os.kill(os.getpid(), signal.SIGKILL)
sys.addaudithook(hook)
from app.cli import main
sys.argv = ["featurestore", *sys.argv[3:]]
sys.exit(main())
"""

# moment -> (audit event, its n-th occurrence, 1m bar files visible after the kill); the run writes 4 files,
# each as os.open of an empty temporary file ("open"), write, fsync, os.replace ("os.rename"), unlink
# ("os.remove").
KILL_MOMENTS = {
    "a temporary file created, nothing written to it": ("open", 1, 0),
    "the first file written, not yet renamed": ("os.rename", 1, 0),
    "the first file renamed into place": ("os.remove", 1, 1),
    "every file in place, the catalog not yet refreshed": ("os.remove", 4, 4),
}


@pytest.mark.slow
@pytest.mark.parametrize("moment", list(KILL_MOMENTS))
def test_a_killed_ingest_leaves_a_readable_store_and_a_rerun_completes_it(tmp_path, run_cli, uninterrupted, moment):
    root = tmp_path / "store"
    # The store already holds another series, as a store being extended by a scheduled job would.
    ingest_synthetic(Store(root), ["SOL/USDT"], "1h", since=SINCE, until=UNTIL, now=NOW)
    event, nth, visible_files = KILL_MOMENTS[moment]
    killed = subprocess.run([sys.executable, "-c", KILL_AT, event, str(nth), *KILLED_ARGS, "--store", str(root)],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr  # killed at that point, not finished or failed
    minute_files = [p.relative_to(root) for p in bar_files(root) if "timeframe=1m" in str(p)]
    assert len(minute_files) == visible_files
    for name in minute_files:  # what is in place is what the uninterrupted run wrote there, byte for byte
        assert (root / name).read_bytes() == (uninterrupted.root / name).read_bytes()

    # Every parquet file a reader's glob finds is whole and readable; temporary files stay out of the glob.
    visible = bar_files(root)
    assert all(not part.startswith(".") for path in visible for part in path.relative_to(root).parts)
    for path in visible:
        pl.read_parquet(path)
    assert duckdb.sql(f"SELECT count(*) FROM read_parquet('{root}/kind=bars/**/*.parquet')").fetchall()[0][0] >= 168
    checked = run_cli("validate", "--store", root)
    assert checked.returncode == 0, checked.stderr
    assert "SOL/USDT" in checked.stdout

    # The re-run (the same call the CLI makes, in-process to keep the suite fast) completes the store.
    ingest_synthetic(Store(root), ["BTC/USDT", "ETH/USDT"], "1m", since=utc(2023, 11, 1), until=utc(2024, 3, 1),
                     now=NOW)

    expected = stored_bars(uninterrupted, timeframe="1m")
    assert_frame_equal(stored_bars(Store(root), timeframe="1m"), expected, check_exact=True)
    assert [p.relative_to(root) for p in bar_files(root) if "timeframe=1m" in str(p)] == [
        p.relative_to(uninterrupted.root) for p in bar_files(uninterrupted.root)]
    assert run_sql("SELECT count(*) AS n FROM bars WHERE timeframe = '1m'", Store(root))["n"].item() == expected.height
    assert not list(root.rglob("*.tmp"))  # the killed writer's temporary file, removed by the re-run


def test_a_rerun_repairs_the_catalog_of_an_ingest_killed_before_its_catalog_refresh(tmp_path, monkeypatch):
    store = Store(tmp_path / "store")
    bars = synthetic_bars(["BTC/USDT"], "1h", since=SINCE, until=UNTIL)
    # ingest_bars = validate, write the parquet, refresh the catalog: this is the state a kill after step two leaves.
    store.write_bars(validate_bars(bars, "1h"), exchange="synthetic", timeframe="1h")

    assert ingest_synthetic(store, ["BTC/USDT"], "1h", since=SINCE, until=UNTIL, now=NOW) == {"BTC/USDT": 0}

    assert store.catalog_path.exists()
    monkeypatch.chdir(store.root)  # the catalog's paths are relative to the store directory
    with duckdb.connect("catalog.duckdb", read_only=True) as con:
        assert con.execute("SELECT count(*) FROM bars").fetchall() == [(168,)]
