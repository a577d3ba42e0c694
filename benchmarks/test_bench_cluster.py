"""Scale-out on this machine: one ``featurestore`` process against a cluster of two, as users run them.

- ``cluster_replay_1proc`` / ``cluster_replay_2proc``: ``featurestore stream`` replays 20 symbols of
  ``research_data`` (one day in to the end: 20 x 198.6k = 3.97M bars at full scale) in windows of 1,000 bars into
  Redis (the session's ``redis-server``, an emptied database per round), one process with one worker against two
  processes (``--process-id 0/1 --addresses``) with one worker each. bars/s = bars / wall time from starting the
  processes until the last one exited: interpreter start, imports, the cluster's agreement and connection,
  numba's compile of the view (each process compiles it: it is not cached on disk), the warm starts, the sinks.
  The run after start-up (each process's own "done in" figure: building its flow, the agreement, the flow; the
  slowest process's) is noted beside it, and the CPU
  time the processes used (user + system, all of them): on this shared machine other work takes cores, so the
  CPU time shows what the cluster costs, and how fast it could be on two idle cores (the busiest process's
  share, assuming the work splits evenly). Target: two processes at least 1.3x the rate of one, end to end.
- ``cluster_backfill_1proc`` / ``cluster_backfill_workers2`` / ``cluster_backfill_2proc``: ``featurestore backfill
  --view research`` over all of ``research_data`` (50 symbols x 200k bars = 10M bars), into a fresh store per round
  (hard links to the bars): the plain backfill (one process, its two writer threads), ``--workers 2`` (one process,
  a Bytewax dataflow of two workers) and two processes of one worker each. Reported, no target.

A fresh store per round; the processes' own output is checked after each round (every bar received and applied;
every symbol's rows written). How to run and keep results: see ``benchmarks/conftest.py``
(``.venv/bin/python -m pytest benchmarks -q --benchmark-enable --benchmark-only -s -k cluster``).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import resource
import shutil
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from featurestore.config import StoreConfig, write_config
from featurestore.store import Store
from streaming.cluster import free_port

SCRIPT = str(Path(sys.executable).parent / "featurestore")
REPLAY_SYMBOLS = 20
ROUNDS = 3
WARM_MINUTES = 1440
FLOW_SECONDS: dict[str, list[float]] = {}  # key -> each round's slowest "done in" figure
CPU_SECONDS: dict[str, list[float]] = {}  # key -> each round's CPU time, every process together


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run(commands: list[list[str]], cwd: Path, key: str) -> list[str]:
    """Start every command at once, wait for all; their stdout (a failure raises with its stderr)."""
    env = {k: v for k, v in os.environ.items() if k != "FEATURESTORE_HOME"}
    before = _cpu()
    processes = [subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for command in commands]
    outputs = [process.communicate(timeout=900) for process in processes]
    CPU_SECONDS.setdefault(key, []).append(_cpu() - before)
    for process, (_, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, err
    return [out for out, _ in outputs]


def _cpu_note(key: str, processes: int) -> str:
    cpu = min(CPU_SECONDS[key])
    return f"CPU time {cpu:.2f} s over {processes} process(es) (fastest round)"


def _cluster(command: list[str], processes: int) -> list[list[str]]:
    if processes == 1:
        return [command]
    addresses = ";".join(f"127.0.0.1:{free_port()}" for _ in range(processes))
    return [[*command, "--process-id", str(i), "--addresses", addresses] for i in range(processes)]


class Rounds:
    """A fresh store per round (a Redis database for its online store when given), removed after the round."""

    def __init__(self, research_data, base: Path, online=None) -> None:
        self.data, self.base, self.online, self.counter = research_data, base, online, itertools.count()

    def setup(self) -> tuple[tuple[Store], dict]:
        store = self.data.fresh_store(self.base / f"round{next(self.counter)}")
        if self.online is not None:
            write_config(store.root, StoreConfig(online_store=self.online()))
        return (store,), {}

    def teardown(self, store: Store) -> None:
        shutil.rmtree(store.root, ignore_errors=True)


@pytest.fixture(scope="module")
def replay(research_data) -> tuple[list[str], datetime, int]:
    """(symbols, start, bars replayed) of the cluster replay."""
    symbols = research_data.symbols[:REPLAY_SYMBOLS]
    frames = research_data.per_symbol[:REPLAY_SYMBOLS]
    start = frames[0]["ts"].min() + timedelta(minutes=min(WARM_MINUTES, frames[0].height // 10))
    return symbols, start, sum(frame.filter(frame["ts"] >= start).height for frame in frames)


@pytest.mark.parametrize("processes", [1, 2])
def test_cluster_replay(benchmark, bench_record, bench_note, research_data, replay, redis_server, tmp_path,
                        processes: int):
    symbols, start, bars = replay
    key = f"cluster_replay_{processes}proc"
    rounds = Rounds(research_data, tmp_path, online=lambda: redis_server.fresh(9) + "?ttl=1h")

    def run(store: Store) -> None:
        command = [SCRIPT, "stream", "--store", str(store.root), "--view", "research", "--symbols", ",".join(symbols),
                   "--from", start.isoformat()]
        outputs = _run(_cluster(command, processes), tmp_path, key)
        FLOW_SECONDS.setdefault(key, []).append(max(float(re.search(r"done in ([0-9.]+) s", out)[1]) for out in outputs))
        totals = json.loads(store.stream_metrics_path("research").read_text())["total"]
        assert totals["received"] == totals["applied"] == bars

    benchmark.pedantic(run, setup=rounds.setup, teardown=rounds.teardown, rounds=ROUNDS)
    bench_record(key, f"stream replay {len(symbols)} symbols into Redis, {processes} process(es)", bars=bars)
    if benchmark.stats is None:
        return
    best, flow = benchmark.stats.stats.min, min(FLOW_SECONDS[key])
    bench_note(f"stream replay of {len(symbols)} symbols ({bars:,} bars, batch 1000) into Redis, {processes} process(es) "
               f"of 1 worker: fastest round {best:.2f} s end to end = {bars / best / 1e6:.2f}M bars/s; after start-up "
               f"(slowest process's own figure, fastest round) {flow:.2f} s = {bars / flow / 1e6:.2f}M bars/s; "
               f"{_cpu_note(key, processes)}")
    if processes == 2 and "cluster_replay_1proc" in FLOW_SECONDS:
        one, two = min(CPU_SECONDS["cluster_replay_1proc"]), min(CPU_SECONDS[key])
        bench_note(f"  2 processes vs 1: after start-up {min(FLOW_SECONDS['cluster_replay_1proc']) / flow:.2f}x the "
                   f"rate; CPU time {two / one:.2f}x (the cost of the second process: its start, its compile, the "
                   f"exchange); on two idle cores at best {one / (two / 2):.2f}x the rate (end to end: see the ratio "
                   f"table and the target below)")


@pytest.mark.parametrize("how", ["1proc", "workers2", "2proc"])
def test_cluster_backfill(benchmark, bench_record, bench_note, research_data, tmp_path, how: str):
    key, bars = f"cluster_backfill_{how}", research_data.height
    rounds = Rounds(research_data, tmp_path)
    label = {"1proc": "1 process (plain backfill)", "workers2": "1 process, --workers 2",
             "2proc": "2 processes of 1 worker"}[how]

    def run(store: Store) -> None:
        command = [SCRIPT, "backfill", "--view", "research", "--store", str(store.root)]
        if how == "workers2":
            command += ["--workers", "2"]
        outputs = _run(_cluster(command, 2 if how == "2proc" else 1), tmp_path, key)
        written = sum(int(m[1].replace(",", "")) for out in outputs for m in re.finditer(r": (\d+) rows written, ", out))
        assert written == bars

    benchmark.pedantic(run, setup=rounds.setup, teardown=rounds.teardown, rounds=ROUNDS)
    bench_record(key, f"backfill research {bars / 1e6:.0f}M bars, {label}", bars=bars)
    if benchmark.stats is not None:
        best = benchmark.stats.stats.min
        bench_note(f"backfill research, {len(research_data.symbols)} symbols x {research_data.per_symbol[0].height:,} "
                   f"bars, {label}: fastest round {best:.2f} s end to end = {bars / best / 1e6:.2f}M bars/s; "
                   f"{_cpu_note(key, 2 if how == '2proc' else 1)}")
