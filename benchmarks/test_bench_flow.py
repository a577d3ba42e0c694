"""The streaming dataflow end to end: ``run_flow(build_flow(config))`` on the ``research`` view, the real steps
(key by symbol, warm-started keyed feature step) and the real sinks (online store, metrics JSON).

- ``flow_replay_batched``: replay of ``research_data`` (50 symbols x 200k one-minute bars) in ``BarBatch``
  windows of 1,000 bars, from one day in (``start``; that first day is each symbol's warm start) to the end:
  9.93M bars a round (target >= 1M bars/s).
- ``flow_replay_per_bar``: the same with ``batch=1`` (one ``Bar`` per item, the live path), the first
  ``PER_BAR_MINUTES`` after ``start`` (50 x 5,000 = 250k bars a round, not scaled) (target >= 50k bars/s).
  Both with the row log (parquet parts, on by default); ``flow_replay_per_bar_no_log`` is the per-bar replay
  without it, the baseline of its overhead (target: the row log costs under 10%).
- bars/s = bars replayed / wall time of ``run_flow(build_flow(config))``, everything counted: Bytewax start
  and stop, each partition reading its symbol's stored bars, the warm starts, both sinks. One worker, the online
  store in SQLite; the same with two worker threads once (``*_2workers``), and with one worker into Redis
  (``*_redis``: the session's ``redis-server`` on loopback, an emptied database per round; one pipelined script
  call per batch of items). A fresh store per round (hard links to the bars, no online store yet: a warm start
  needs only the stored bars, no backfilled features). Numba's compile and Bytewax's first run are paid by a
  small flow before anything is timed. Afterwards, the warm starts and the source reads are timed alone (the
  library functions called directly, outside the flow) and noted. Target: into Redis at least half the SQLite
  rate, batched.
- ``flow_bar_to_online_latency``: a live feed, one bar at a time: a one-partition source (``_LiveSource``,
  passed as ``build_flow(source=...)``) emits the last ``LATENCY_BARS`` stored bars of one symbol, one every
  ``LATENCY_INTERVAL_S``, stamping ``perf_counter_ns`` as it hands each to Bytewax (the first
  ``LATENCY_SKIPPED`` bars, the warm start among them, are not counted). A bar's latency ends when the online
  sink's SQLite COMMIT of its row returned, in the writer (the sink partition's ``write_batch`` wrapped during
  this test): the row is then in the store for every reader. Checked from outside too: a reader in another
  process polls ``SqliteOnlineStore(readonly=True).get`` in a tight loop and stamps each new row (``perf_counter_ns`` is
  CLOCK_MONOTONIC on Linux: one clock for both processes; a poll takes a few microseconds). Both sides share the
  2 cores: a descheduled reader sees rows late (or misses one), a writer descheduled right after its commit
  stamps it late. The source's ``next_awake`` returns the next bar's due time, so Bytewax does not poll it
  before; how late after that each bar left (Bytewax's scheduling) is not in the latency and is noted.
  ``run_flow``'s epoch interval (``snapshot_interval_s``, 10 s) only bounds snapshots: items pass through the
  steps and sinks as they come (the latencies show it). In the same worker the metrics sink rewrites its JSON
  file (with fsync) once a second, and SQLite checkpoints its WAL (with fsync) every 1,000 pages: a bar behind
  one of those waits for it. The measured bars are cut into ``LATENCY_WINDOWS`` consecutive windows, the
  rounds of the report: its p50 and p99 are the fastest window's and the median window's (target p99 <= 1 ms).

How to run and keep results: see ``benchmarks/conftest.py``
(``.venv/bin/python -m pytest benchmarks -q --benchmark-enable --benchmark-only -s -k flow``).
"""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from bytewax.inputs import DynamicSource, StatelessSourcePartition

from featurestore.builtin_views import RESEARCH
from featurestore.config import StoreConfig, write_config
from featurestore.online import connect
from featurestore.online.sqlite import SqliteOnlineStore
from featurestore.store import Store
from streaming.clock import to_ms, wall_clock_ms
from streaming.engine import ViewEngine
from streaming.flow import StreamConfig, build_flow
from streaming.items import Bar
from streaming.keyed_state import warm_from_store
from streaming.runner import run_flow
from streaming.sinks import read_metrics
from streaming.sinks.online import _OnlinePartition
from streaming.sources.replay import ReplaySource

BATCHED_ROUNDS = 3  # ~15 s a round at full scale
PER_BAR_ROUNDS = 3  # ~6 s a round
BATCH = 1000
WARM_MINUTES = 1440  # stored bars before ``start``, per symbol: the warm start (less when the data is small)
PER_BAR_MINUTES = 5_000  # x 50 symbols = 250k bars a round (fewer when the data is small)
LATENCY_BARS = 2_000  # measured bars (one symbol)
LATENCY_SKIPPED = 100  # emitted first, not measured: the warm start and the first allocations
LATENCY_INTERVAL_S = 0.002
LATENCY_WINDOWS = 4  # the measured bars in consecutive windows: the rounds of the verdict (one flow, one run)
EXCHANGE = "synthetic"  # conftest's
NAMES = RESEARCH.feature_names
MINUTE = timedelta(minutes=1)

_READER = """
import json, sys, time
from featurestore.online.sqlite import SqliteOnlineStore
path, view, symbol, last_ms = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
clock, seen, previous = time.perf_counter_ns, {}, None
with SqliteOnlineStore(path, readonly=True) as online:
    online.latest(view, symbol)
    print("ready", flush=True)
    deadline = time.monotonic() + 120
    while previous != last_ms and time.monotonic() < deadline:
        row = online.latest(view, symbol)
        now = clock()
        if row is not None:
            ms = int(row.ts.timestamp() * 1000)
            if ms != previous:
                seen[ms], previous = now, ms
print(json.dumps(seen))
"""


# -- fixtures --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def start(research_data) -> datetime:
    """Where replays start: after each symbol's warm-up day (a tenth of the bars when there are few)."""
    minutes = research_data.per_symbol[0].height
    return research_data.bars["ts"].min() + min(WARM_MINUTES, minutes // 10) * MINUTE


@pytest.fixture(scope="module")
def warmed(research_data, start: datetime, tmp_path_factory) -> None:
    """Numba's compile (both engine paths) and Bytewax's first run, paid before anything is timed."""
    store = research_data.fresh_store(tmp_path_factory.mktemp("flow_warm"))
    for batch in (BATCH, 1):
        config = StreamConfig(store=str(store.root), view="research", symbols=research_data.symbols[:2],
                              start=start.isoformat(), until=(start + 2 * BATCH * MINUTE).isoformat(), batch=batch)
        run_flow(build_flow(config))
    shutil.rmtree(store.root, ignore_errors=True)


class Rounds:
    """For ``benchmark.pedantic``: a fresh store per round (its online store at ``online``, emptied, when given);
    after the round, its results checked and it removed."""

    def __init__(self, data, base: Path, check: Callable[[Store], None], online: Callable[[], str] | None = None
                 ) -> None:
        self.data, self.base, self.check, self.online, self.counter = data, base, check, online, itertools.count()

    def setup(self) -> tuple[tuple[Store], dict[str, object]]:
        store = self.data.fresh_store(self.base / f"round{next(self.counter)}")
        if self.online is not None:
            write_config(store.root, StoreConfig(online_store=self.online()))
        return (store,), {}

    def teardown(self, store: Store) -> None:
        self.check(store)
        shutil.rmtree(store.root, ignore_errors=True)


def _config(store: Store, symbols: list[str], start: datetime, until: datetime | None, batch: int,
            row_log: bool = True) -> StreamConfig:
    return StreamConfig(store=str(store.root), view="research", symbols=symbols, start=start.isoformat(),
                        until=until.isoformat() if until else None, batch=batch, offline_parts=row_log)


def _checker(frames: list[pl.DataFrame], bars: int) -> Callable[[Store], None]:
    """``bars`` received and applied; each symbol's online row stamped at the close of its last bar in ``frames``
    (its history up to the end of the replay), the first symbol's equal to the backfill's (``compute_symbol``)."""
    want = RESEARCH.compute_symbol(frames[0]).row(-1)
    closes = {f["symbol"][0]: f["ts"][-1] + MINUTE for f in frames}

    def check(store: Store) -> None:
        config = StreamConfig(store=str(store.root), view="research", symbols=[want[0]])
        total = read_metrics(config.metrics_path)["total"]
        assert total["received"] == total["applied"] == bars
        with connect(store.online_url, readonly=True) as online:
            rows = {row.symbol: row for row in online.rows("research")}
        assert {symbol: row.ts for symbol, row in rows.items()} == closes
        assert (rows[want[0]].ts, rows[want[0]].features) == (want[1], dict(zip(NAMES, want[2:], strict=True)))

    return check


def _replay(benchmark, research_data, base: Path, start: datetime, until: datetime | None, *, batch: int,
            workers: int, rounds: int, online: Callable[[], str] | None, row_log: bool = True) -> int:
    """Time ``rounds`` replays of every symbol from ``start`` to ``until`` (None: the end) into the online store
    ``online()`` gives (None: SQLite in the store); return bars per round."""
    frames = [f if until is None else f.filter(pl.col("ts") < until) for f in research_data.per_symbol]
    bars = sum(f.filter(pl.col("ts") >= start).height for f in frames)
    stores = Rounds(research_data, base, _checker(frames, bars), online)

    def run(store: Store) -> None:
        run_flow(build_flow(_config(store, research_data.symbols, start, until, batch, row_log)), workers=workers)

    benchmark.pedantic(run, setup=stores.setup, teardown=stores.teardown, rounds=rounds)
    return bars


def _startup_note(research_data, start: datetime, until: datetime | None, batch: int, best_s: float) -> str:
    """The warm starts and the source reads of one replay, timed alone (library calls, outside the flow)."""
    store, symbols, start_ms = research_data.store, research_data.symbols, to_ms(start)
    engine, warm = ViewEngine(RESEARCH), warm_from_store(research_data.store, EXCHANGE)
    began = time.perf_counter()
    for symbol in symbols:
        warm(engine, symbol, start_ms)
    warmed = time.perf_counter()
    source = ReplaySource(store, EXCHANGE, RESEARCH.timeframe, symbols, start_ms=start_ms,
                          end_ms=to_ms(until) if until else None, batch=batch, clock=wall_clock_ms)
    for symbol in symbols:
        source.build_part("bars", symbol, None)
    read = time.perf_counter()
    history = research_data.bars.filter(pl.col("ts") < start).height
    return (f"  of which, timed alone: warm starts {warmed - began:.2f} s (engine over {history:,} stored bars "
            f"before start), source reads {read - warmed:.2f} s (ReplaySource.build_part x {len(symbols)}) = "
            f"{(warmed - began) / best_s:.0%} and {(read - warmed) / best_s:.0%} of the fastest round ({best_s:.2f} s)")


# -- replay throughput -----------------------------------------------------------------------------------

RUNS = [(1, "sqlite"), (2, "sqlite"), (1, "redis")]  # (workers, online store)


def _online(backend: str, request: pytest.FixtureRequest) -> Callable[[], str] | None:
    """None (SQLite, the store's default), or a function emptying a Redis database and returning its URL."""
    if backend == "sqlite":
        return None
    server = request.getfixturevalue("redis_server")
    return lambda: server.fresh(8)


def _suffix(workers: int, backend: str) -> str:
    return ("" if workers == 1 else f"_{workers}workers") + ("" if backend == "sqlite" else f"_{backend}")


@pytest.mark.parametrize(("workers", "backend"), RUNS)
def test_flow_replay_batched(benchmark, bench_record, bench_note, research_data, warmed, start: datetime,
                             tmp_path: Path, workers: int, backend: str, request: pytest.FixtureRequest):
    bars = _replay(benchmark, research_data, tmp_path, start, None, batch=BATCH, workers=workers,
                   rounds=BATCHED_ROUNDS if workers == 1 else 1, online=_online(backend, request))
    bench_record(f"flow_replay_batched{_suffix(workers, backend)}", f"flow replay batch={BATCH}, {workers} worker(s), "
                 f"{backend}, {bars / 1e6:.2f}M bars", bars=bars)
    if benchmark.stats is None:
        return
    best = benchmark.stats.stats.min
    bench_note(f"flow replay batched (batch={BATCH}, {workers} worker(s), online ({backend}) + metrics + row log): "
               f"{bars:,} bars, fastest round {best:.2f} s = {bars / best / 1e6:.2f}M bars/s, median "
               f"{bars / benchmark.stats.stats.median / 1e6:.2f}M bars/s")
    if (workers, backend) == (1, "sqlite"):
        bench_note(_startup_note(research_data, start, None, BATCH, best))


@pytest.mark.parametrize(("workers", "backend"), RUNS)
def test_flow_replay_per_bar(benchmark, bench_record, bench_note, research_data, warmed, start: datetime,
                             tmp_path: Path, workers: int, backend: str, request: pytest.FixtureRequest):
    minutes = research_data.per_symbol[0].filter(pl.col("ts") >= start).height
    until = start + min(PER_BAR_MINUTES, minutes) * MINUTE
    bars = _replay(benchmark, research_data, tmp_path, start, until, batch=1, workers=workers,
                   rounds=PER_BAR_ROUNDS if workers == 1 else 1, online=_online(backend, request))
    bench_record(f"flow_replay_per_bar{_suffix(workers, backend)}", f"flow replay batch=1, {workers} worker(s), "
                 f"{backend}, {bars / 1e3:.0f}k bars", bars=bars)
    if benchmark.stats is None:
        return
    best = benchmark.stats.stats.min
    bench_note(f"flow replay one bar per item (batch=1, {workers} worker(s), {backend}): {bars:,} bars, fastest round "
               f"{best:.2f} s = {bars / best / 1e3:.1f}k bars/s, median {bars / benchmark.stats.stats.median / 1e3:.1f}k bars/s")
    if (workers, backend) == (1, "sqlite"):
        bench_note(_startup_note(research_data, start, until, 1, best))


def test_flow_replay_per_bar_without_the_row_log(benchmark, bench_record, bench_note, research_data, warmed,
                                                start: datetime, tmp_path: Path):
    """The baseline of the row log's overhead: ``flow_replay_per_bar`` with ``offline_parts=False``."""
    minutes = research_data.per_symbol[0].filter(pl.col("ts") >= start).height
    until = start + min(PER_BAR_MINUTES, minutes) * MINUTE
    bars = _replay(benchmark, research_data, tmp_path, start, until, batch=1, workers=1, rounds=PER_BAR_ROUNDS,
                   online=None, row_log=False)
    bench_record("flow_replay_per_bar_no_log", f"flow replay batch=1, 1 worker, no row log, {bars / 1e3:.0f}k bars",
                 bars=bars)
    if benchmark.stats is not None:
        bench_note(f"flow replay one bar per item without the row log (--no-offline-parts): fastest round "
                   f"{benchmark.stats.stats.min:.2f} s = {bars / benchmark.stats.stats.min / 1e3:.1f}k bars/s")


# -- one live bar to the online store --------------------------------------------------------------------

class _LiveSource(DynamicSource[Bar]):
    """``bars`` one at a time, one every ``interval_s``; ``emitted[bar.ts]`` = ``perf_counter_ns`` when handed over,
    ``late[bar.ts]`` = ns after its due time."""

    def __init__(self, bars: list[Bar], interval_s: float, emitted: dict[int, int], late: dict[int, int]) -> None:
        self.bars, self.interval_ns, self.emitted, self.late = bars, int(interval_s * 1e9), emitted, late

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _LivePartition:
        return _LivePartition(self)


class _LivePartition(StatelessSourcePartition[Bar]):
    def __init__(self, source: _LiveSource) -> None:
        self._source, self._bars = source, iter(source.bars)
        self._due_ns = time.time_ns()

    def next_batch(self) -> list[Bar]:
        bar = next(self._bars)  # StopIteration ends the flow
        source = self._source
        source.late[bar.ts] = time.time_ns() - self._due_ns
        self._due_ns += source.interval_ns
        source.emitted[bar.ts] = time.perf_counter_ns()
        return [bar]

    def next_awake(self) -> datetime:
        return datetime.fromtimestamp(self._due_ns / 1e9, UTC)


def _percentiles_us(ns: np.ndarray) -> str:
    p50, p99, p999 = np.percentile(ns, [50, 99, 99.9]) / 1e3
    return f"p50 {p50:.0f} us, p99 {p99:.0f} us, p99.9 {p999:.0f} us, max {ns.max() / 1e3:.0f} us"


def test_flow_bar_to_online_latency(benchmark, bench_latency, bench_note, research_data, warmed, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch):
    store = research_data.fresh_store(tmp_path / "store")
    SqliteOnlineStore(store.online_path).close()  # the schema, so that the reader can open it first
    frame = research_data.per_symbol[0]
    symbol = frame["symbol"][0]
    live = frame.tail(LATENCY_SKIPPED + LATENCY_BARS).select("ts", "open", "high", "low", "close", "volume")
    feed = [Bar(symbol, to_ms(ts), *prices) for ts, *prices in live.rows()]
    emitted: dict[int, int] = {}
    late: dict[int, int] = {}
    committed: dict[int, int] = {}  # row ts -> perf_counter_ns when the sink's write (its COMMIT) returned
    write_batch = _OnlinePartition.write_batch

    def timed_write(self, items) -> None:
        write_batch(self, items)
        now = time.perf_counter_ns()
        for _, rows in items:
            if len(rows):
                committed[rows.ts[-1]] = now

    monkeypatch.setattr(_OnlinePartition, "write_batch", timed_write)
    last_ms = feed[-1].ts + 60_000
    reader = subprocess.Popen([sys.executable, "-c", _READER, str(store.online_path), "research", symbol,
                               str(last_ms)], stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout.readline().strip() == "ready"
        config = StreamConfig(store=str(store.root), view="research", symbols=[symbol])
        benchmark.pedantic(lambda: run_flow(build_flow(config, source=_LiveSource(feed, LATENCY_INTERVAL_S,
                                                                                emitted, late))), rounds=1)
        seen = {int(ms): ns for ms, ns in json.loads(reader.communicate(timeout=150)[0]).items()}
    finally:
        reader.kill()
    measured = [bar.ts for bar in feed[LATENCY_SKIPPED:]]
    commit, visible = _latencies(committed, emitted, measured), _latencies(seen, emitted, measured)
    lateness = np.array([late[ts] for ts in measured])
    assert commit.size >= 0.9 * len(measured) and last_ms in seen
    p50, p99 = np.percentile(commit, [50, 99]) / 1e3
    seen_p99 = np.percentile(visible, 99) / 1e3
    benchmark.extra_info.update(latency_us_p50=float(p50), latency_us_p99=float(p99),
                                latency_us_max=float(commit.max() / 1e3), reader_latency_us_p99=float(seen_p99))
    bench_note(f"flow bar -> online store, one live bar every {LATENCY_INTERVAL_S * 1e3:g} ms, 1 symbol, 1 worker, "
               f"until the sink's COMMIT returned ({commit.size:,} of {len(measured):,} bars had a write of their own): "
               f"{_percentiles_us(commit)}")
    bench_note(f"  until a reader in another process saw the row ({visible.size:,} bars seen; it shares the 2 cores: "
               f"descheduled, it sees rows late or misses them): {_percentiles_us(visible)}")
    bench_note(f"  source polled after its due time (not counted): {_percentiles_us(lateness)}")
    bench_latency("flow_bar_to_online", f"flow, one live bar from the source to its online row committed (SQLite), "
                  f"{LATENCY_WINDOWS} windows of {len(measured) // LATENCY_WINDOWS:,} bars",
                  np.array_split(commit, LATENCY_WINDOWS))


def _latencies(done: dict[int, int], emitted: dict[int, int], measured: list[int]) -> np.ndarray:
    """ns from each measured bar's emission to its row's time in ``done`` (row ts = bar open + 1 minute)."""
    return np.array([done[ts + 60_000] - emitted[ts] for ts in measured if ts + 60_000 in done])
