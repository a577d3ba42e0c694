"""The incremental engine (``streaming.engine.ViewEngine``, numba-compiled) on the ``research`` view, without
Bytewax, against the polars backfill computation in the same session. One process, one thread.

- ``engine_update_batch``: ``update_batch`` over each symbol's whole history (``research_data``: 50 symbols x
  200k one-minute bars), a fresh state per symbol: batched replay throughput (target >= 1M bars/s).
- ``engine_update``: ``update`` one bar at a time, interleaved across the 50 symbols minute by minute as a
  live feed delivers them, fresh states per round, 50 x 5,000 bars a round (target >= 50k bars/s).
- ``engine_update_latency``: 50,000 single ``update`` calls a round, each timed with ``time.perf_counter_ns``,
  on rows that never repeat (the feed continues across rounds, states kept): p50 / p99 / p99.9 / max.
- Baseline ``engine_compute_symbol``: ``RESEARCH.compute_symbol`` over the same bars, per symbol (what
  ``backfill`` computes). The engine's rows equal it bit for bit (checked).

Numba compiles the view's step function on first use in each process (its kernels come from numba's on-disk
cache when present): the engine is warmed up before anything is timed, and the compile time is reported once,
in-process and cold (a subprocess with an empty ``NUMBA_CACHE_DIR``).

How to run and keep results: see ``benchmarks/conftest.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np
import polars as pl
import pytest

from featurestore.builtin_views import RESEARCH
from streaming.engine import ViewEngine

BATCH_ROUNDS = 5
UPDATE_ROUNDS = 5
LATENCY_ROUNDS = 5
UPDATE_MINUTES = 5_000  # x 50 symbols = 250k one-bar updates a round (not scaled: ~1-2 s a round)
LATENCY_CALLS = 50_000  # timed single calls a round (fewer if the data is too small for 6 rounds)
Row = tuple[int, float, float, float, float, float]  # (open time in epoch ms, open, high, low, close, volume)


@dataclass
class Compiled:
    engine: ViewEngine
    lines: list[str]
    noted: bool = False
    rows: list[list[Row]] = field(default_factory=list)  # per symbol, the first minutes as Python values


_COLD_COMPILE = """
import json, time
import polars as pl
from featurestore.builtin_views import RESEARCH
from streaming.engine import ViewEngine
start = time.perf_counter()
engine = ViewEngine(RESEARCH)
bars = pl.DataFrame({"symbol": ["X/USDT"] * 2, "ts": [0, 60_000], **{c: [1.0, 1.0] for c in
                     ("open", "high", "low", "close", "volume")}}).with_columns(pl.col("ts").cast(pl.Datetime("ms", "UTC")))
engine.update_batch(engine.new_state(), bars)
engine.update(engine.new_state(), 0, 1.0, 1.0, 1.0, 1.0, 1.0)
print(json.dumps(time.perf_counter() - start))
"""


def _rows(frame: pl.DataFrame, count: int) -> list[Row]:
    head = frame.head(count)
    return list(zip(head["ts"].dt.epoch("ms").to_list(),
                    *(head[c].to_list() for c in ("open", "high", "low", "close", "volume")), strict=True))


@pytest.fixture(scope="module")
def compiled(research_data) -> Compiled:
    """The engine, compiled and warmed up; how long compiling took, in this process and cold."""
    first = research_data.per_symbol[0]
    start = time.perf_counter()
    engine = ViewEngine(RESEARCH)
    built = time.perf_counter()
    engine.update_batch(engine.new_state(), first.head(100))
    batch = time.perf_counter()
    engine.update(engine.new_state(), *_rows(first, 1)[0])
    single = time.perf_counter()
    with tempfile.TemporaryDirectory() as cache:  # no cached kernels: what a fresh checkout pays once
        result = subprocess.run([sys.executable, "-c", _COLD_COMPILE], env={**os.environ, "NUMBA_CACHE_DIR": cache},
                                capture_output=True, text=True, check=True)
    cold = json.loads(result.stdout.strip().splitlines()[-1])
    lines = [f"engine compile (excluded from every measurement): {single - start:.2f} s in this process "
             f"(ViewEngine() {(built - start) * 1e3:.1f} ms, first update_batch {batch - built:.2f} s, "
             f"first update {(single - batch) * 1e3:.2f} ms; kernels from numba's on-disk cache if present); "
             f"{cold:.2f} s cold (empty NUMBA_CACHE_DIR, subprocess)"]
    minutes = max(UPDATE_MINUTES, -(-LATENCY_CALLS * (LATENCY_ROUNDS + 1) // len(research_data.per_symbol)))
    return Compiled(engine, lines, rows=[_rows(frame, minutes) for frame in research_data.per_symbol])


@pytest.fixture
def engine(compiled: Compiled, bench_note) -> ViewEngine:
    if not compiled.noted:
        compiled.noted = True
        for line in compiled.lines:
            bench_note(line)
    return compiled.engine


def _interleaved(rows: list[list[Row]], start: int, stop: int) -> list[tuple[int, Row]]:
    """(symbol index, row) minute by minute, every symbol each minute: a live feed's order."""
    return [(k, series[m]) for m in range(start, stop) for k, series in enumerate(rows) if m < len(series)]


# -- batched replay --------------------------------------------------------------------------------------

def test_engine_update_batch(benchmark, bench_record, engine: ViewEngine, research_data):
    def replay() -> list[pl.DataFrame]:
        return [engine.update_batch(engine.new_state(), frame) for frame in research_data.per_symbol]

    rows = benchmark.pedantic(replay, rounds=BATCH_ROUNDS, warmup_rounds=1)
    for got, frame in zip(rows, research_data.per_symbol, strict=True):
        assert got.equals(RESEARCH.compute_symbol(frame))
    bench_record("engine_update_batch", f"engine update_batch {research_data.height / 1e6:.1f}M bars",
                 bars=research_data.height)


def test_baseline_engine_compute_symbol(benchmark, bench_record, research_data):
    def compute() -> list[pl.DataFrame]:
        return [RESEARCH.compute_symbol(frame) for frame in research_data.per_symbol]

    rows = benchmark.pedantic(compute, rounds=BATCH_ROUNDS, warmup_rounds=1)
    assert sum(frame.height for frame in rows) == research_data.height
    bench_record("engine_compute_symbol", "polars compute_symbol (backfill's compute)", bars=research_data.height)


# -- one bar at a time -----------------------------------------------------------------------------------

def test_engine_update(benchmark, bench_record, engine: ViewEngine, compiled: Compiled, research_data):
    minutes = min(UPDATE_MINUTES, *(len(series) for series in compiled.rows))
    feed = _interleaved(compiled.rows, 0, minutes)
    symbols = len(compiled.rows)

    def replay() -> list[tuple[int, list[float | None]]]:
        states = [engine.new_state() for _ in range(symbols)]
        update, last = engine.update, [None] * symbols
        for k, row in feed:
            last[k] = update(states[k], *row)
        return last

    last = benchmark.pedantic(replay, rounds=UPDATE_ROUNDS, warmup_rounds=1)
    # each symbol's last row equals the backfill's row for that bar (bit for bit, nulls as None)
    for (ts, values), frame in zip(last, research_data.per_symbol, strict=True):
        want = RESEARCH.compute_symbol(frame.head(minutes)).row(-1)
        assert (ts, values) == (int(want[1].timestamp() * 1000), list(want[2:]))
    bench_record("engine_update", f"engine update, one bar a call ({len(feed) / 1e3:.0f}k bars)", bars=len(feed))


def test_engine_update_latency(benchmark, bench_latency, bench_note, engine: ViewEngine, compiled: Compiled):
    symbols = len(compiled.rows)
    states = [engine.new_state() for _ in range(symbols)]
    rows = _interleaved(compiled.rows, 0, max(map(len, compiled.rows)))
    calls = min(LATENCY_CALLS, len(rows) // (LATENCY_ROUNDS + 1))
    feed = iter(rows)
    samples: list[np.ndarray] = []  # one array per call of the target (the first is the warm-up round)

    def setup():  # the next bars of the feed: no row is ever applied twice
        return ([next(feed) for _ in range(calls)],), {}

    def timed(chunk: list[tuple[int, Row]]) -> None:
        clock, update = time.perf_counter_ns, engine.update
        latencies = np.empty(len(chunk), dtype=np.int64)
        for i, (k, row) in enumerate(chunk):
            start = clock()
            update(states[k], *row)
            latencies[i] = clock() - start
        samples.append(latencies)

    benchmark.pedantic(timed, setup=setup, rounds=LATENCY_ROUNDS, warmup_rounds=1)
    rounds = samples[1:] or samples  # without the warm-up round
    measured = np.concatenate(rounds)
    p50, p99, p999 = np.percentile(measured, [50, 99, 99.9])
    overhead = _timer_overhead_ns()
    benchmark.extra_info.update(latency_ns_p50=float(p50), latency_ns_p99=float(p99),
                                latency_ns_p999=float(p999), latency_ns_max=int(measured.max()),
                                timer_overhead_ns=overhead)
    bench_note(f"engine update latency, one bar ({measured.size:,} timed calls on distinct rows, "
               f"{symbols} symbols interleaved): p50 {p50 / 1e3:.2f} us, p99 {p99 / 1e3:.2f} us, p99.9 {p999 / 1e3:.2f} us, "
               f"max {measured.max() / 1e3:.0f} us (perf_counter_ns overhead ~{overhead} ns included)")
    bench_latency("engine_update_latency", f"engine update, one bar a call, {calls:,} calls a round", rounds)


def _timer_overhead_ns(samples: int = 10_000) -> int:
    """Median of two back-to-back ``perf_counter_ns`` calls: what each latency sample includes besides ``update``."""
    clock, gaps = time.perf_counter_ns, []
    for _ in range(samples):
        start = clock()
        gaps.append(clock() - start)
    return int(np.median(gaps))
