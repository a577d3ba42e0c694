"""Appends as delta files, and ``compact`` (issue 15 item 1).

New bars newer than a year's stored bars land as a small delta file beside the year's base file; readers, the
backfill and SQL see base + deltas as one series; ``compact`` folds them into the base. Properties: any order of
batches (new, re-sent, gap-filling) stores exactly their union; re-sending writes nothing; a killed compaction or
merge of deltas leaves nothing a reader would count twice; a reader beside a compacting writer sees the series
before or after each step, never a mix.
"""

from __future__ import annotations

import shutil
import threading
import traceback
from datetime import UTC, datetime, timedelta
from pathlib import Path
from unittest import mock

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

import featurestore.store
from featurestore.bars import BAR_COLUMNS, validate_bars
from featurestore.errors import StoreConflictError
from featurestore.sources.synthetic import synthetic_bars
from featurestore.store import BarSeries, Store
from featurestore.validate import validate_store
from streaming.items import Bar
from streaming.sinks import BarStoreSink

SERIES = BarSeries("synthetic", "1h", "BTC/USDT")
# 80 hourly bars across a year boundary: both years get base files and deltas.
BARS = validate_bars(synthetic_bars(["BTC/USDT"], "1h", since=datetime(2023, 12, 30, 12, tzinfo=UTC),
                                    until=datetime(2024, 1, 2, 20, tzinfo=UTC)), "1h")


def write(store: Store, bars: pl.DataFrame) -> dict[str, int]:
    return store.write_bars(bars, exchange=SERIES.exchange, timeframe=SERIES.timeframe)


def stored(store: Store) -> pl.DataFrame:
    return store.read_series(SERIES, list(BAR_COLUMNS))


def names(store: Store) -> list[str]:
    return [f"{path.parent.name}/{path.name}" for path in store.bar_files(SERIES)]


def expected(slices: list[tuple[int, int]]) -> pl.DataFrame:
    return pl.concat([BARS.slice(a, b - a) for a, b in slices]).unique("ts").sort("ts")


batches = st.lists(st.tuples(st.integers(0, 79), st.integers(1, 12)).map(lambda t: (t[0], min(80, t[0] + t[1]))),
                   min_size=1, max_size=14)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(slices=batches, max_deltas=st.sampled_from([2, 32]))
def test_any_order_of_batches_stores_their_union_and_compacts_to_it(tmp_path_factory, slices, max_deltas):
    store = Store(tmp_path_factory.mktemp("store"))
    with mock.patch.object(featurestore.store, "MAX_DELTAS", max_deltas):
        for a, b in slices:
            write(store, BARS.slice(a, b - a))
        want = expected(slices)
        assert_frame_equal(stored(store), want, check_exact=True)
        for year in store.year_files(SERIES):
            assert len(year.deltas) <= max_deltas and not year.superseded
        before = {path: path.read_bytes() for path in store.bar_files(SERIES)}
        for a, b in slices:  # re-sending anything writes nothing
            assert write(store, BARS.slice(a, b - a)) == {"BTC/USDT": 0}
        assert {path: path.read_bytes() for path in store.bar_files(SERIES)} == before
    deltas = sum(len(year.deltas) for year in store.year_files(SERIES))
    assert store.compact(SERIES) == deltas
    assert all(name.endswith("/bars.parquet") for name in names(store))
    assert_frame_equal(stored(store), want, check_exact=True)
    assert store.compact(SERIES) == 0  # idempotent


def test_an_append_is_a_delta_file_and_compact_folds_it(tmp_path):
    store = Store(tmp_path)
    assert write(store, BARS.head(40)) == {"BTC/USDT": 40}
    assert write(store, BARS.slice(40, 5)) == {"BTC/USDT": 5}
    assert write(store, BARS.slice(45, 5)) == {"BTC/USDT": 5}
    first, last = (int(ts.timestamp() * 1000) for ts in (BARS["ts"][40], BARS["ts"][44]))
    assert names(store) == ["year=2023/bars.parquet", "year=2024/bars.parquet",
                            f"year=2024/delta-{first}-{last}.parquet",
                            f"year=2024/delta-{first + 5 * 3_600_000}-{last + 5 * 3_600_000}.parquet"]
    assert store.last_bar_ts(SERIES) == BARS["ts"][49]
    assert store.compact(SERIES) == 2
    assert names(store) == ["year=2023/bars.parquet", "year=2024/bars.parquet"]
    assert_frame_equal(stored(store), BARS.head(50), check_exact=True)


def test_a_conflict_with_a_delta_writes_nothing(tmp_path, hash_tree):
    store = Store(tmp_path)
    write(store, BARS.head(40))
    write(store, BARS.slice(40, 10))
    before = hash_tree(tmp_path)
    changed = BARS.slice(45, 10).with_columns(close=pl.when(pl.col("ts") == BARS["ts"][47])
                                              .then(pl.col("close") + 1).otherwise(pl.col("close")))
    with pytest.raises(StoreConflictError, match=r"1 incoming bar\(s\) disagree with stored bars in .*year=2024"):
        write(store, changed)
    assert hash_tree(tmp_path) == before


def test_a_gap_filled_behind_the_deltas_rewrites_the_year(tmp_path):
    store = Store(tmp_path)
    write(store, BARS.head(40))
    write(store, BARS.slice(50, 10))  # a gap 40..50, then a delta after it
    assert write(store, BARS.slice(40, 10)) == {"BTC/USDT": 10}
    assert names(store) == ["year=2023/bars.parquet", "year=2024/bars.parquet"]
    assert_frame_equal(stored(store), BARS.head(60), check_exact=True)


def killed_after_rename(store: Store, action) -> None:
    """Run ``action`` (a compaction or a merge of deltas), then put back the files it removed: the state a
    process killed between renaming the new file into place and removing the files it holds leaves."""
    year_dir = store.year_file(SERIES, 2024).parent
    saved = {path.name: path.read_bytes() for path in year_dir.glob("delta-*.parquet")}
    action()
    for name, data in saved.items():
        (year_dir / name).write_bytes(data)


@pytest.mark.parametrize("step", ["compaction", "merge of deltas"])
def test_files_a_killed_step_left_are_never_read_and_the_next_write_removes_them(tmp_path, step, run_cli):
    store = Store(tmp_path)
    write(store, BARS.head(40))
    for start in range(40, 70, 5):
        write(store, BARS.slice(start, 5))
    with mock.patch.object(featurestore.store, "MAX_DELTAS", 6):
        killed_after_rename(store, (lambda: store.compact(SERIES)) if step == "compaction"
                            else (lambda: write(store, BARS.slice(70, 5))))
        want = BARS.head(70 if step == "compaction" else 75)
        year = store.year_files(SERIES)[-1]
        assert len(year.superseded) == 6 and len(year.deltas) == (0 if step == "compaction" else 1)
        assert_frame_equal(stored(store), want, check_exact=True)
        assert store.last_bar_ts(SERIES) == want["ts"][-1]
        write(store, BARS.slice(75, 5))
    assert not store.year_files(SERIES)[-1].superseded
    counted = run_cli("sql", "SELECT count(*) AS n, count(DISTINCT ts) AS d FROM bars", "--format", "csv",
                      "--store", tmp_path)
    assert counted.stdout == f"n,d\n{want.height + 5},{want.height + 5}\n", counted.stderr


def test_a_reader_beside_appends_and_compactions_sees_whole_series(tmp_path):
    store = Store(tmp_path)
    write(store, BARS.head(20))
    done, seen, errors = threading.Event(), [], []

    def read() -> None:
        while not done.is_set():
            try:
                seen.append(stored(store))
            except Exception:  # reported below, with where it happened
                errors.append(traceback.format_exc())
                return

    reader = threading.Thread(target=read)
    reader.start()
    try:
        with mock.patch.object(featurestore.store, "MAX_DELTAS", 3):
            for start in range(20, 80, 2):
                write(store, BARS.slice(start, 2))
                if start % 10 == 0:
                    store.compact(SERIES)
    finally:
        done.set()
        reader.join()
    assert not errors, errors
    for frame in seen:  # each read is the series as it stood before or after some step: a prefix of BARS
        assert_frame_equal(frame, BARS.head(frame.height), check_exact=True)


def features(root: Path) -> pl.DataFrame:
    """The stored feature rows, as every reader sees them (the time they were written left out)."""
    return pl.read_parquet(sorted(root.glob("kind=features/**/*.parquet")), hive_partitioning=True).drop(
        "created_at").sort("symbol", "ts")


def test_appends_through_the_cli_read_the_same_in_sql_and_backfill_before_and_after_compact(tmp_path, run_cli):
    root = tmp_path / "store"
    ingest = ("ingest", "--symbols", "BTC/USDT,ETH/USDT", "--timeframe", "1m", "--start", "2024-01-01T00:00",
              "--store", root)
    for end in ("2024-01-01T12:00", "2024-01-01T12:01", "2024-01-01T12:30", "2024-01-01T13:00"):
        assert run_cli(*ingest, "--end", end).returncode == 0
    assert sum(1 for _ in root.glob("kind=bars/**/delta-*.parquet")) == 6
    query = ("sql", "SELECT symbol, count(*) AS n, count(DISTINCT ts) AS d FROM bars GROUP BY 1 ORDER BY 1",
             "--format", "csv", "--store", root)
    counted = run_cli(*query)
    assert counted.stdout == "symbol,n,d\nBTC/USDT,780,780\nETH/USDT,780,780\n", counted.stderr
    assert validate_store(Store(root)).summary["delta_files"].to_list() == [3, 3]
    assert run_cli("backfill", "--view", "research", "--store", root).returncode == 0
    before = features(root)
    done = run_cli("compact", "--store", root)
    assert done.returncode == 0 and "compacted 2 of 2 series" in done.stdout, done.stderr
    assert not list(root.glob("kind=bars/**/delta-*.parquet"))
    assert run_cli(*query).stdout == counted.stdout
    again = run_cli("compact", "--store", root)
    assert again.returncode == 0 and "compacted 0 of 2 series" in again.stdout
    shutil.rmtree(root / "kind=features")
    assert run_cli("backfill", "--view", "research", "--store", root).returncode == 0
    assert_frame_equal(features(root), before, check_exact=True)


def test_delta_names_hold_their_first_and_last_open_times(tmp_path):
    store = Store(tmp_path)
    write(store, BARS.head(40))
    write(store, BARS.slice(40, 3))
    (delta,) = store.year_files(SERIES)[-1].deltas
    assert (delta.first_ms, delta.last_ms) == tuple(
        (ts - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1) for ts in (BARS["ts"][40], BARS["ts"][42]))
    assert Path(delta.path).name == f"delta-{delta.first_ms}-{delta.last_ms}.parquet"


def test_the_live_bar_sink_stores_new_bars_and_leaves_out_a_revised_one(tmp_path, caplog):
    store = Store(tmp_path)
    write(store, BARS.head(40))
    part = BarStoreSink(store, SERIES.exchange, SERIES.timeframe).build("bar_store", 0, 1)
    bars = [Bar("BTC/USDT", ts // 1000, *prices) for ts, *prices in
            BARS.slice(38, 5).select(pl.col("ts").dt.epoch("us"), *BAR_COLUMNS[2:]).rows()]
    revised = bars[1]._replace(close=bars[1].close + 1)  # the exchange changed a stored bar
    with caplog.at_level("WARNING", logger="streaming.sinks.bar_store"):
        part.write_batch([bars[0], revised, *bars[2:]])
    assert_frame_equal(stored(store), BARS.head(43), check_exact=True)
    (warning,) = [r.getMessage() for r in caplog.records]
    assert f"BTC/USDT: bar at {revised.ts} ms not stored" in warning and "disagree with stored bars" in warning
    part.write_batch(bars)  # the same bars again (a restart): nothing new
    assert_frame_equal(stored(store), BARS.head(43), check_exact=True)
