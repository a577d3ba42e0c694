"""Ingest + store throughput (bars/s) of ~1M one-minute bars, against baselines from the same session.

- ``ingest_bars``: validate the raw batch, merge it into an empty store (one zstd parquet file per symbol
  and year, written atomically with fsync), refresh ``catalog.duckdb``. A fresh store directory per round.
- Baselines: ``df.write_parquet`` of the same frame to one file (the I/O floor) and ``synthetic_bars``
  generating the frame (what a source costs).
- Components, for attributing the ratio: ``validate_bars`` alone and ``Store.write_bars`` alone.
- Peak memory (the largest resident set) of ``featurestore ingest`` in a subprocess, 5 and 50 symbols x one year of
  one-minute bars from the synthetic source, then of resampling them to 1h (``--source resample``): both hold one
  symbol at a time, so the ratio 50 / 5 should be ~1x.
- Appending one new minute (one bar per symbol) to a store that already holds a year of bars per symbol
  (a copy of the SQL benchmarks' store), and to one holding five years per symbol (4 symbols), each against the
  same call into an empty store: the cost of a streaming increment as the stored history grows. New bars land
  as delta files (``Store.write_bars``); the rounds append up to ``APPEND_ROUNDS + 1`` deltas per year, below the
  32 that trigger a merge of deltas (the merge's cost is the deltas', not the year's: not measured here).

How to run and keep results: see ``benchmarks/conftest.py``.
"""

from __future__ import annotations

import itertools
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from conftest import BENCH_SCALE, SINCE, SQL_MINUTES, SYMBOLS
from featurestore.bars import validate_bars
from featurestore.ingest import ingest_bars, ingest_synthetic
from featurestore.sources.synthetic import synthetic_bars
from featurestore.store import Store

SCRIPT = str(Path(sys.executable).parent / "featurestore")

ROUNDS = 9
APPEND_ROUNDS = 5
MEMORY_ROUNDS = 1  # deterministic enough: the resident set does not depend on the machine's load
MEMORY_DAYS = max(2, round(365 * BENCH_SCALE))
TIMEFRAME = "1m"  # the timeframe of the ``ingest_frame`` fixture


class RoundDirs:
    """For ``benchmark.pedantic``: a new, not yet existing directory per round, removed after the round."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.counter = itertools.count()

    def setup(self, *args: object) -> tuple[tuple[object, ...], dict[str, object]]:
        """The target's arguments: the round's directory, then ``args``."""
        return (self.base / f"round{next(self.counter)}", *args), {}

    def teardown(self, root: Path, *args: object) -> None:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def round_dirs(tmp_path: Path) -> RoundDirs:
    return RoundDirs(tmp_path)


def test_ingest_bars(benchmark, bench_record, ingest_frame: pl.DataFrame, round_dirs: RoundDirs):
    def ingest(root: Path) -> dict[str, int]:
        return ingest_bars(Store(root), ingest_frame, exchange="synthetic", timeframe=TIMEFRAME, source="benchmark")

    new_rows = benchmark.pedantic(ingest, setup=round_dirs.setup, teardown=round_dirs.teardown,
                                  rounds=ROUNDS, warmup_rounds=1)
    assert sum(new_rows.values()) == ingest_frame.height
    bench_record("ingest_bars", f"ingest_bars {ingest_frame.height / 1e6:.1f}M bars", bars=ingest_frame.height)


def test_store_write_bars(benchmark, bench_record, ingest_frame: pl.DataFrame, round_dirs: RoundDirs):
    checked = validate_bars(ingest_frame, TIMEFRAME)

    def write(root: Path) -> dict[str, int]:
        return Store(root).write_bars(checked, exchange="synthetic", timeframe=TIMEFRAME)

    new_rows = benchmark.pedantic(write, setup=round_dirs.setup, teardown=round_dirs.teardown,
                                  rounds=ROUNDS, warmup_rounds=1)
    assert sum(new_rows.values()) == ingest_frame.height
    bench_record("store_write_bars", "Store.write_bars (empty store)", bars=ingest_frame.height)


def test_validate_bars(benchmark, bench_record, ingest_frame: pl.DataFrame):
    checked = benchmark.pedantic(validate_bars, args=(ingest_frame, TIMEFRAME), kwargs={"source": "benchmark"},
                                 rounds=ROUNDS, warmup_rounds=1)
    assert checked.height == ingest_frame.height
    bench_record("validate_bars", "validate_bars", bars=ingest_frame.height)


def test_baseline_write_parquet(benchmark, bench_record, ingest_frame: pl.DataFrame, round_dirs: RoundDirs):
    def write(root: Path) -> None:
        root.mkdir()
        ingest_frame.write_parquet(root / "bars.parquet")

    benchmark.pedantic(write, setup=round_dirs.setup, teardown=round_dirs.teardown, rounds=ROUNDS, warmup_rounds=1)
    bench_record("write_parquet", "df.write_parquet (one file)", bars=ingest_frame.height)


def test_baseline_synthetic_bars(benchmark, bench_record, ingest_frame: pl.DataFrame):
    # The same call that built the fixture: its symbols and [first ts, last ts + 1 bar).
    symbols = ingest_frame["symbol"].unique(maintain_order=True).to_list()
    since, until = ingest_frame["ts"].min(), ingest_frame["ts"].max() + timedelta(minutes=1)
    bars = benchmark.pedantic(synthetic_bars, args=(symbols, TIMEFRAME), kwargs={"since": since, "until": until},
                              rounds=ROUNDS, warmup_rounds=1)
    assert bars.equals(ingest_frame)
    bench_record("synthetic_bars", "synthetic_bars (generation)", bars=bars.height)


# -- a streaming increment: one new bar per symbol ------------------------------------------------------

def _minute_bars(symbols: list[str], ts: datetime) -> pl.DataFrame:
    """One valid bar per symbol opening at ``ts``."""
    n = len(symbols)
    return pl.DataFrame({"symbol": symbols, "ts": [ts] * n, "open": [100.0] * n, "high": [101.0] * n,
                         "low": [99.0] * n, "close": [100.5] * n, "volume": [1.0] * n},
                        schema_overrides={"ts": pl.Datetime("ms", "UTC")})


@pytest.fixture
def full_store(sql_data, tmp_path: Path) -> Iterator[Store]:
    """A writable copy of the SQL benchmarks' store (a year of one-minute bars per symbol)."""
    root = tmp_path / "store"
    shutil.copytree(sql_data.store.root, root)
    yield Store(root)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def five_years(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Store, list[str], datetime]]:
    """A store of 4 symbols x five years of one-minute bars (10.5M bars at BENCH_SCALE=1): (store, symbols, until)."""
    root = tmp_path_factory.mktemp("five_years")
    symbols, until = SYMBOLS[:4], SINCE + timedelta(minutes=5 * SQL_MINUTES)
    ingest_synthetic(Store(root), symbols, TIMEFRAME, since=SINCE, until=until, now=until)
    yield Store(root), symbols, until
    shutil.rmtree(root, ignore_errors=True)


def _bench_append(benchmark, store: Store, symbols: list[str], until: datetime) -> None:
    """Append the next minute after everything stored, for every symbol, once per round."""
    minutes = itertools.count()

    def setup():
        return (_minute_bars(symbols, until + timedelta(minutes=next(minutes))),), {}

    def append(bars: pl.DataFrame) -> dict[str, int]:
        return ingest_bars(store, bars, exchange="synthetic", timeframe=TIMEFRAME, source="benchmark")

    new_rows = benchmark.pedantic(append, setup=setup, rounds=APPEND_ROUNDS, warmup_rounds=1)
    assert new_rows == dict.fromkeys(symbols, 1)


def _bench_empty(benchmark, round_dirs: RoundDirs, symbols: list[str], until: datetime) -> None:
    """The same call into a new, empty store each round."""
    bars = _minute_bars(symbols, until)

    def ingest(root: Path, bars: pl.DataFrame) -> dict[str, int]:
        return ingest_bars(Store(root), bars, exchange="synthetic", timeframe=TIMEFRAME, source="benchmark")

    new_rows = benchmark.pedantic(ingest, setup=lambda: round_dirs.setup(bars), teardown=round_dirs.teardown,
                                  rounds=ROUNDS, warmup_rounds=1)
    assert new_rows == dict.fromkeys(symbols, 1)


def test_ingest_append_one_minute(benchmark, bench_record, sql_data, full_store: Store):
    _bench_append(benchmark, full_store, sql_data.symbols, sql_data.until)
    bench_record("ingest_append", f"ingest_bars +1 minute ({len(sql_data.symbols)} bars), "
                 f"{sql_data.bars / 1e6:.1f}M stored (1 year per symbol)")


def test_baseline_ingest_one_minute_empty_store(benchmark, bench_record, sql_data, round_dirs: RoundDirs):
    _bench_empty(benchmark, round_dirs, sql_data.symbols, sql_data.until)
    bench_record("ingest_small_empty", "the same call, empty store")


def test_ingest_append_one_minute_five_years(benchmark, bench_record, five_years):
    store, symbols, until = five_years
    _bench_append(benchmark, store, symbols, until)
    bench_record("ingest_append_5y", f"ingest_bars +1 minute ({len(symbols)} bars), "
                 f"{(until - SINCE) // timedelta(minutes=1) * len(symbols) / 1e6:.1f}M stored (5 years per symbol)")


def test_baseline_ingest_one_minute_empty_store_four_symbols(benchmark, bench_record, five_years,
                                                            round_dirs: RoundDirs):
    _, symbols, until = five_years
    _bench_empty(benchmark, round_dirs, symbols, until)
    bench_record("ingest_small_empty_5y", f"the same call ({len(symbols)} bars), empty store")


# -- peak memory of a whole ingest ----------------------------------------------------------------------

def _peak_rss(args: list[str]) -> int:
    """Bytes: the peak resident set of ``featurestore *args``, measured by a parent process of its own."""
    code = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    done = subprocess.run([sys.executable, "-c", code, SCRIPT, *args], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return int(done.stdout) * 1024  # ru_maxrss is in KiB on Linux


@pytest.mark.parametrize("symbols", [5, 50])
def test_ingest_and_resample_peak_memory(benchmark, bench_memory, tmp_path: Path, symbols: int):
    names = ",".join(f"S{i:02d}/USDT" for i in range(symbols))
    until = SINCE + timedelta(days=MEMORY_DAYS)
    peaks: dict[str, list[int]] = {"ingest": [], "resample": []}

    def ingest_and_resample(root: Path) -> None:
        peaks["ingest"].append(_peak_rss(["ingest", "--store", str(root), "--symbols", names, "--timeframe",
                                          TIMEFRAME, "--start", SINCE.isoformat(), "--end", until.isoformat()]))
        peaks["resample"].append(_peak_rss(["ingest", "--store", str(root), "--source", "resample",
                                            "--from-timeframe", TIMEFRAME, "--timeframe", "1h"]))

    benchmark.pedantic(ingest_and_resample, setup=RoundDirs(tmp_path).setup, rounds=MEMORY_ROUNDS, iterations=1)
    bench_memory(f"ingest_peak_memory_{symbols}", f"featurestore ingest peak memory, {symbols} symbols x "
                 f"{MEMORY_DAYS} days of 1m bars", peaks["ingest"])
    bench_memory(f"resample_peak_memory_{symbols}", f"featurestore ingest --source resample 1m -> 1h peak memory, "
                 f"{symbols} symbols x {MEMORY_DAYS} days", peaks["resample"])
