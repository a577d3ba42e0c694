"""Benchmark data built once per session, and the report printed (``make bench``: and written) at the end of the run.

Run (2 cores, shared and noisy: read the ratios, not the absolute numbers)::

    make bench
    .venv/bin/python -m pytest benchmarks -q --benchmark-only -s          # the same, uncaptured
    BENCH_SCALE=0.1 .venv/bin/python -m pytest benchmarks -q --benchmark-only   # quick smoke run

To keep pytest-benchmark's raw stats too, add ``--benchmark-json FILE.json``: it holds every benchmark's rounds,
the bars and bars/s (or the per-round percentiles) in each ``extra_info``, and the report's document under
``featurestore_report``.

Data (``BENCH_SCALE`` scales the number of bars, default 1.0):
- ``ingest_frame``: 10 symbols x 100,000 one-minute bars (1.0M bars) of the synthetic market, in memory.
- ``sql_data``: a store of 20 symbols x 365 days (2024-01-01 to 2024-12-31) of one-minute bars (10.5M
  bars, one file per symbol and year), built through ``ingest_synthetic`` under a ``tmp_path_factory``
  directory (~10 s, ~400 MB on disk, removed at the end of the session). Read-only: copy it to write.
- ``research_data``: a store of 50 symbols x 200,000 one-minute bars (10M bars, one file per symbol), built
  through ``ingest_synthetic`` (~10 s), and the same bars in memory, whole and split per symbol.
  Read-only: backfill into ``research_data.fresh_store(dir)`` (hard links to its bar files).
- ``export_data``: a store of 10 symbols x 500,000 one-minute bars (5M bars, with a two-day outage in the middle
  of every series: two ``ingest_synthetic`` calls) backfilled with the ``research`` and ``indicators`` views
  (10M feature rows; ~20-30 s), and each view's stored rows in memory. Read-only.

Every benchmark registers its figures: ``bench_record`` (a time, or a throughput with ``bars``), ``bench_latency``
(per-round latency samples -> ``key:p50`` and ``key:p99``), ``bench_count`` (errors). At the end of the run the
report (``benchmarks/report.py``) is printed: ``HEADLINE``, the README's table (each figure with its baseline from
the same run, its target and the verdict), then every other comparison in ``COMPARISONS``, then the lines
benchmarks added through ``bench_note`` (time breakdowns, latency details, compile times). ``make bench`` also
writes it to ``benchmarks/results.md`` and the document it is rendered from to ``benchmarks/results.json``
(``--bench-results``), so the README's table is pasted from one run.

Figures are the fastest round and, in parentheses, the median round; ratio = time / baseline time (per bar or
per call when the two count different things), below 1 faster, on every line. On this shared 2-core machine
noise comes in bursts that roughly double every time for a few rounds (another process takes a core), and it
only ever adds time: the fastest rounds gave the same ratios run after run (e.g. run_sql / native DuckDB
1.90-1.97x over five runs) while the medians' ratio swung between 1.3x and 3.4x. That is why a target is met
only when the fastest and the median round both meet it, and the verdict says which one decided.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pytest
from report import Line, Measured, Target, render, results

from featurestore.backfill import backfill
from featurestore.builtin_views import INDICATORS, RESEARCH
from featurestore.ingest import ingest_synthetic
from featurestore.offline import read_features
from featurestore.sources.synthetic import synthetic_bars
from featurestore.store import BarSeries, Store


def _scale() -> float:
    raw = os.environ.get("BENCH_SCALE", "1.0")
    try:
        scale = float(raw)
    except ValueError:
        raise pytest.UsageError(f"BENCH_SCALE must be a positive number, got {raw!r}") from None
    if not scale > 0:
        raise pytest.UsageError(f"BENCH_SCALE must be a positive number, got {raw!r}")
    return scale


BENCH_SCALE = _scale()
TIMEFRAME = "1m"
EXCHANGE = "synthetic"
SINCE = datetime(2024, 1, 1, tzinfo=UTC)
_MAJORS = ["BTC/USDT", "ETH/USDT", "SOL/USDT", "BNB/USDT", "XRP/USDT", "DOGE/USDT"]
SYMBOLS = _MAJORS + [f"S{i:02d}/USDT" for i in range(len(_MAJORS), 20)]  # 20 symbols

INGEST_SYMBOLS = SYMBOLS[:10]
INGEST_MINUTES = max(1, round(100_000 * BENCH_SCALE))  # 10 x 100k = 1.0M bars, all in one year file each
SQL_SYMBOLS = SYMBOLS
# 20 x 525,600 = 10.5M bars: 2024 up to Dec 31, so that appended bars land in the stored year files.
SQL_MINUTES = max(2 * 1440, round(365 * 1440 * BENCH_SCALE))
RESEARCH_SYMBOLS = _MAJORS + [f"S{i:02d}/USDT" for i in range(len(_MAJORS), 50)]  # 50 symbols, SYMBOLS first
RESEARCH_MINUTES = max(1440, round(200_000 * BENCH_SCALE))  # 50 x 200k = 10M bars, 2024 only (one file each)
EXPORT_SYMBOLS = SYMBOLS[:10]
EXPORT_MINUTES = max(4 * 1440, round(500_000 * BENCH_SCALE))  # 10 x 500k = 5M bars; x 2 views = 10M feature rows
EXPORT_GAP = timedelta(days=2)  # no bars (hence no feature rows) for two days in the middle of every series


@dataclass(frozen=True)
class SqlData:
    """The SQL store and what the queries need to know about it."""

    store: Store
    bars: int
    symbols: list[str]
    until: datetime  # open time of the first bar not stored (the store holds [SINCE, until) per symbol)
    glob: str  # every bar file, as the catalog's ``bars`` view reads them
    point_symbol: str
    point_start: datetime  # a one-day window in the middle of the stored span
    point_end: datetime

    def point_files(self) -> list[Path]:
        """The point symbol's files, named by partition (what the application can pass explicitly)."""
        return self.store.bar_files(BarSeries(EXCHANGE, TIMEFRAME, self.point_symbol))


@pytest.fixture(scope="session")
def ingest_frame() -> pl.DataFrame:
    """1.0M unvalidated bars in memory (10 symbols x 100k one-minute bars), as a source yields them."""
    return synthetic_bars(INGEST_SYMBOLS, TIMEFRAME, since=SINCE, until=SINCE + timedelta(minutes=INGEST_MINUTES))


@pytest.fixture(scope="session")
def sql_data(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SqlData]:
    """A store of 10.5M one-minute bars (20 symbols x 365 days), built once through the library's ingest path."""
    root = tmp_path_factory.mktemp("sql_store")
    store = Store(root)
    until = SINCE + timedelta(minutes=SQL_MINUTES)
    new_rows = ingest_synthetic(store, SQL_SYMBOLS, TIMEFRAME, since=SINCE, until=until, now=until)
    middle = SINCE + timedelta(days=(SQL_MINUTES // 1440) // 2)
    yield SqlData(
        store=store,
        bars=sum(new_rows.values()),
        symbols=SQL_SYMBOLS,
        until=until,
        glob=f"{store.bars_root}/**/*.parquet",
        point_symbol=SQL_SYMBOLS[7],
        point_start=middle,
        point_end=middle + timedelta(days=1),
    )
    shutil.rmtree(root, ignore_errors=True)


@dataclass(frozen=True)
class ResearchData:
    """A store of one-minute bars for feature backfills, and the same bars in memory."""

    store: Store
    bars: pl.DataFrame  # every stored bar as read from the store, sorted by (symbol, ts)
    per_symbol: list[pl.DataFrame]  # ``bars`` split by symbol, in symbol order
    symbols: list[str]
    now: datetime  # the close of the last stored bar

    @property
    def height(self) -> int:
        return self.bars.height

    def fresh_store(self, root: Path) -> Store:
        """A new store at ``root`` holding hard links to the bar files and nothing else (no catalog, no features)."""
        shutil.copytree(self.store.bars_root, root / self.store.bars_root.name, copy_function=os.link)
        return Store(root)


@pytest.fixture(scope="session")
def research_data(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ResearchData]:
    """10M one-minute bars (50 symbols x 200k), stored through the library's ingest path and read back."""
    root = tmp_path_factory.mktemp("research_store")
    store = Store(root)
    until = SINCE + timedelta(minutes=RESEARCH_MINUTES)
    ingest_synthetic(store, RESEARCH_SYMBOLS, TIMEFRAME, since=SINCE, until=until, now=until)
    bars = store.scan_bars(EXCHANGE, TIMEFRAME).collect().sort("symbol", "ts")
    per_symbol = bars.partition_by("symbol", maintain_order=True)
    assert bars.height == len(RESEARCH_SYMBOLS) * RESEARCH_MINUTES and len(per_symbol) == len(RESEARCH_SYMBOLS)
    yield ResearchData(store, bars, per_symbol, sorted(RESEARCH_SYMBOLS), until)
    shutil.rmtree(root, ignore_errors=True)


@dataclass(frozen=True)
class ExportData:
    """A store with two backfilled 1m views over bars with a gap, and every stored feature row in memory."""

    store: Store
    bars: int
    symbols: list[str]
    gap_start: datetime  # no bar opens in [gap_start, gap_end)
    gap_end: datetime
    now: datetime  # the close of the last stored bar
    features: dict[str, pl.DataFrame]  # per view name: ``read_features(store, view).collect()``, sorted by (symbol, ts)

    @property
    def feature_rows(self) -> int:
        return sum(frame.height for frame in self.features.values())


@pytest.fixture(scope="session")
def export_data(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExportData]:
    """5M one-minute bars (10 symbols x 500k, a two-day gap in the middle), backfilled with ``research`` and
    ``indicators`` (10M feature rows), through the library's ingest and backfill paths."""
    root = tmp_path_factory.mktemp("export_store")
    store = Store(root)
    half = EXPORT_MINUTES // 2
    gap_start = SINCE + timedelta(minutes=half)
    gap_end = gap_start + EXPORT_GAP
    now = gap_end + timedelta(minutes=EXPORT_MINUTES - half)
    bars = sum(sum(ingest_synthetic(store, EXPORT_SYMBOLS, TIMEFRAME, since=since, until=until, now=now).values())
               for since, until in ((SINCE, gap_start), (gap_end, now)))
    for view in (RESEARCH, INDICATORS):
        backfill(store, view, now=now, progress=False)
    features = {view.name: read_features(store, view).collect() for view in (RESEARCH, INDICATORS)}
    assert bars == len(EXPORT_SYMBOLS) * EXPORT_MINUTES
    assert all(frame.height == bars for frame in features.values())
    yield ExportData(store, bars, sorted(EXPORT_SYMBOLS), gap_start, gap_end, now, features)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def duckdb_native(sql_data: SqlData) -> Iterator[duckdb.DuckDBPyConnection]:
    """An in-memory DuckDB database holding the same bars as a native table ``bars`` (the limit)."""
    con = duckdb.connect(":memory:")
    con.execute(f"CREATE TABLE bars AS SELECT * FROM read_parquet('{sql_data.glob}', hive_partitioning = true)")
    assert con.execute("SELECT count(*) FROM bars").fetchall() == [(sql_data.bars,)]
    yield con
    con.close()


# -- figures, the report and the tables ------------------------------------------------------------------

MEASURED: dict[str, Measured] = {}  # key -> the benchmark's fastest and median round
NOTES: list[str] = []  # lines benchmarks add below the tables (``bench_note``): breakdowns, percentiles, compiles
STARTED, LOAD_BEFORE = datetime.now(UTC), [round(x, 2) for x in os.getloadavg()]

# The README's table: the headline figures in its order, each with its baseline and target. Targets on a
# throughput are minimum bars/s, on a latency maximum microseconds, on a ratio the maximum time ratio.
HEADLINE: tuple[Line, ...] = (
    Line("ingest_bars", "write_parquet"),
    Line("ingest_append", "ingest_small_empty", Target(2.0, of="ratio", why="an append costs what the new bars cost")),
    Line("ingest_append_5y", "ingest_small_empty_5y", Target(2.0, of="ratio", why="with five years stored too")),
    Line("run_sql_agg", "duckdb_native_agg"),
    Line("run_sql_agg", "polars_agg"),
    Line("backfill_research", "pandas_research", Target(1 / 3, of="ratio", why="3x pandas' bars/s")),
    Line("backfill_research", "polars_select_over", Target(1.25, of="ratio", why="0.8x bare polars' bars/s")),
    Line("backfill_research", "polars_select_over", Target(1 / 0.6, of="ratio", why="issue 15: 0.6x bare polars")),
    Line("engine_update_batch", target=Target(1e6)),
    Line("engine_update", target=Target(50e3)),
    Line("engine_update_latency:p50"),
    Line("engine_update_latency:p99"),
    Line("flow_replay_batched", target=Target(1e6)),
    Line("flow_replay_per_bar", target=Target(50e3)),
    Line("flow_bar_to_online:p99", target=Target(1000)),
    Line("export_parquet", "polars_join_asof", Target(2.0, of="ratio")),
    Line("serving_score:p50", target=Target(50)),
    Line("serving_score:p50", "serving_onnx_run:p50", Target(2.0, of="ratio", why="2x onnxruntime alone")),
    Line("serving_score:p99", target=Target(100)),
    Line("serving_score:p50", "serving_sklearn_predict:p50", Target(0.05, of="ratio", why="20x faster")),
    Line("http_fresh:p50"),
    Line("http_fresh:p99", target=Target(2000)),
    Line("http_fresh:errors", target=Target(0)),
    Line("http_cached:p50"),
    Line("http_cached:p99"),
    Line("online_read_redis:p99", target=Target(1000)),
    Line("serving_score_redis:p99", target=Target(1000)),
    Line("flow_replay_batched_redis", "flow_replay_batched", Target(2.0, of="ratio", why="0.5x SQLite's bars/s")),
    Line("cluster_replay_2proc", "cluster_replay_1proc", Target(1 / 1.3, of="ratio", why="1.3x one process's bars/s")),
    Line("flow_replay_per_bar", "flow_replay_per_bar_no_log", Target(1.1, of="ratio", why="the row log costs < 10%")),
    Line("monitor_signals", target=Target(72_000 / 5.0, why="a day of 50 symbols' 1m rows in under 5 s")),
    Line("ingest_peak_memory_50", "ingest_peak_memory_5", Target(1.2, of="ratio", why="memory bounded by one symbol")),
    Line("resample_peak_memory_50", "resample_peak_memory_5", Target(1.2, of="ratio",
                                                                   why="memory bounded by one symbol")),
)

# Every other comparison: (figure key, baseline key), both measured in the same session.
COMPARISONS: tuple[tuple[str, str], ...] = (
    ("ingest_bars", "synthetic_bars"),
    ("store_write_bars", "write_parquet"),
    ("validate_bars", "write_parquet"),
    ("run_sql_agg", "duckdb_parquet_agg"),
    ("run_sql_point", "duckdb_native_point"),
    ("run_sql_point", "duckdb_partition_point"),
    ("run_sql_point", "duckdb_parquet_point"),
    ("backfill_research", "polars_select_per_symbol"),
    ("polars_select_over", "polars_select_per_symbol"),
    ("engine_update_batch", "engine_compute_symbol"),
    ("engine_update", "engine_compute_symbol"),
    ("flow_replay_batched", "engine_update_batch"),  # the flow adds Bytewax, the warm starts and the sinks
    ("flow_replay_per_bar", "engine_update"),
    ("flow_replay_batched_2workers", "flow_replay_batched"),
    ("flow_replay_per_bar_2workers", "flow_replay_per_bar"),
    ("export_parquet", "pandas_merge_asof"),
    ("pandas_merge_asof", "polars_join_asof"),
    ("serving_score:p50", "serving_booster_predict:p50"),
    ("http_cached:p50", "http_fresh:p50"),
    ("sdk_point", "duckdb_native_point"),
    ("sdk_point", "duckdb_partition_point"),
    ("sdk_point", "duckdb_parquet_point"),
    ("flow_replay_per_bar_redis", "flow_replay_per_bar"),
    ("cluster_backfill_workers2", "cluster_backfill_1proc"),
    ("cluster_backfill_2proc", "cluster_backfill_1proc"),
    ("online_read_redis:p50", "online_read:p50"),
    ("serving_score_redis:p50", "serving_score:p50"),
    ("monitor_offline", "monitor_bare"),
    ("monitor_signals", "monitor_bare"),
)


@pytest.fixture
def bench_note() -> Callable[[str], None]:
    """``bench_note(line)``: print ``line`` now and again at the end of the session, below the tables."""

    def note(line: str) -> None:
        print(line)
        NOTES.append(line)

    return note


@pytest.fixture
def bench_record(benchmark) -> Callable[..., None]:
    """``bench_record(key, label, bars=None, unit="bars")`` after the benchmark ran: its fastest and median round,
    as a time, or with ``bars`` (per round) as a throughput in ``unit``/s."""

    def record(key: str, label: str, *, bars: int | None = None, unit: str = "bars") -> None:
        benchmark.extra_info["bench_scale"] = BENCH_SCALE
        if bars is not None:
            benchmark.extra_info["bars"] = bars
        if benchmark.stats is None:  # benchmarks disabled (plain `pytest benchmarks`): ran once, untimed
            return
        stats = benchmark.stats.stats
        if bars is None:
            MEASURED[key] = Measured(label, "time", stats.min, stats.median, stats.rounds)
        else:
            MEASURED[key] = Measured(label, "throughput", bars / stats.min, bars / stats.median, stats.rounds, unit)
            benchmark.extra_info.update(bars_per_s_best=round(bars / stats.min),
                                        bars_per_s_median=round(bars / stats.median))

    return record


@pytest.fixture
def bench_latency(benchmark) -> Callable[..., None]:
    """``bench_latency(key, label, rounds)``: latency samples in ns, one array per round -> the figures
    ``key:p50`` and ``key:p99`` in us (each the fastest round's percentile and the median round's)."""

    def record(key: str, label: str, rounds: list[np.ndarray]) -> None:
        if benchmark.disabled:
            return
        for q in (50, 99):
            values = [float(np.percentile(ns, q)) / 1e3 for ns in rounds]
            MEASURED[f"{key}:p{q}"] = Measured.of_rounds(f"{label}, p{q}", "latency", values)
            benchmark.extra_info[f"p{q}_us_per_round"] = values

    return record


@pytest.fixture
def bench_memory(benchmark) -> Callable[..., None]:
    """``bench_memory(key, label, peaks)``: a peak memory in bytes per round -> the figure ``key``."""

    def record(key: str, label: str, peaks: list[int]) -> None:
        if not benchmark.disabled:
            MEASURED[key] = Measured.of_rounds(label, "memory", [float(peak) for peak in peaks])
            benchmark.extra_info["peak_bytes_per_round"] = peaks

    return record


@pytest.fixture
def bench_count(benchmark) -> Callable[..., None]:
    """``bench_count(key, label, counts)``: a count per round (errors...) -> the figure ``key``, their total."""

    def record(key: str, label: str, counts: list[int]) -> None:
        if not benchmark.disabled:
            MEASURED[key] = Measured(label, "count", sum(counts), sum(counts), len(counts))

    return record


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--bench-results", type=Path, metavar="FILE.md",
                     help="write the report there (Markdown) and beside it the same stem .json (make bench does)")


def _results() -> dict:
    return results(measured=MEASURED, headline=HEADLINE, comparisons=COMPARISONS, notes=NOTES,
                   bench_scale=BENCH_SCALE, load_before=LOAD_BEFORE, started=STARTED)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Print the report last (after pytest-benchmark's table); write it to ``--bench-results`` if given."""
    try:
        return (yield)
    finally:
        if MEASURED:
            document = _results()
            terminalreporter.write_line("")
            for line in render(document).splitlines():
                terminalreporter.write_line(line)
            path = config.getoption("--bench-results")
            if path is not None:
                path.with_suffix(".json").write_text(json.dumps(document, indent=1) + "\n")
                path.write_text(render(document))
                terminalreporter.write_line(f"report written to {path} and {path.with_suffix('.json')}")


def pytest_benchmark_update_json(config, benchmarks, output_json):
    """Put the report's document into the ``--benchmark-json`` output too."""
    output_json["featurestore_report"] = _results()
