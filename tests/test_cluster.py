"""A Bytewax cluster of ``featurestore stream`` processes on this machine, as users start it, into one Redis.

Processes started with different options stop at once naming the difference (Bytewax alone waits forever);
two processes replaying 20 symbols end with the online rows and the output of one process; a process killed
mid-run stops the other with an error, and both restarted with recovery end as an uninterrupted run. The
routing keys of ``streaming.placement`` send each symbol where Bytewax's own routing does.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.testing import TestingSource

from app.sdk import FeatureStore
from featurestore.errors import FeatureStoreError
from featurestore.ingest import ingest_synthetic
from featurestore.online import connect
from featurestore.store import Store
from streaming.cluster import free_port, join
from streaming.placement import Placement, route
from streaming.runner import run_flow

NOW = datetime(2030, 1, 1, tzinfo=UTC)
SYMBOLS = [f"S{k:02d}/USDT" for k in range(20)]
SINCE, START, UNTIL = (datetime(2024, 5, d, tzinfo=UTC) for d in (1, 2, 3))  # streamed: 20 x 1,440 bars
ROWS = 20 * 1440


@pytest.fixture(scope="module")
def base_store(tmp_path_factory) -> Store:
    """Two days of 1m bars for 20 symbols (the first day warms each symbol's state)."""
    store = Store(tmp_path_factory.mktemp("cluster") / "store")
    ingest_synthetic(store, SYMBOLS, "1m", since=SINCE, until=UNTIL, now=NOW)
    return store


@dataclass(frozen=True)
class Run:
    """One run's store (a copy of the base store, its online store a Redis database) and output file."""

    root: Path
    online_url: str

    @classmethod
    def fresh(cls, base: Store, root: Path, online_url: str) -> Run:
        shutil.copytree(base.root, root / "store")
        FeatureStore.init(root / "store", online_store=online_url)
        return cls(root, online_url)

    @property
    def jsonl(self) -> Path:
        return self.root / "rows.jsonl"

    def command(self, script: str, *options: str | os.PathLike) -> list[str]:
        return [script, "stream", "--store", str(self.root / "store"), "--view", "research", "--symbols",
                ",".join(SYMBOLS), "--from", START.isoformat(), "--batch", "240", "--jsonl", str(self.jsonl),
                "--offline-parts", *map(str, options)]

    def outputs(self) -> tuple[list[str], list[tuple], list[str]]:
        """Every JSONL line (sorted), every online row but when it was written, every parquet part's name."""
        with connect(self.online_url, readonly=True) as online:
            rows = [(r.symbol, r.ts, r.view_version, r.features) for r in online.rows("research")]
        parts = sorted(p.name for p in (self.root / "store" / "kind=stream").rglob("part-*.parquet"))
        return sorted(self.jsonl.read_text().splitlines()), rows, parts


def start(command: list[str], cwd: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "FEATURESTORE_HOME"}
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def cluster_commands(run: Run, script: str, *options: str | os.PathLike) -> list[list[str]]:
    addresses = f"127.0.0.1:{free_port()};127.0.0.1:{free_port()}"
    return [run.command(script, *options, "--process-id", str(i), "--addresses", addresses) for i in (0, 1)]


def finish(processes: list[subprocess.Popen], timeout: float = 180) -> list[tuple[int, str]]:
    """Wait for every process; return (exit code, stderr) of each."""
    return [(p.wait(timeout=timeout), p.communicate()[1]) for p in processes]


@pytest.fixture(scope="module")
def reference(base_store, tmp_path_factory, redis_server, featurestore_script) -> Run:
    """One process, uninterrupted."""
    root = tmp_path_factory.mktemp("single")
    run = Run.fresh(base_store, root, redis_server.fresh(3) + "?ttl=1d")
    ((code, err),) = finish([start(run.command(featurestore_script), root)])
    assert code == 0, err
    lines, rows, parts = run.outputs()
    assert len(lines) == ROWS and len(rows) == len(SYMBOLS) and len(parts) == len(SYMBOLS) * 2  # a part per symbol and day: rows 05-02 00:01 .. 05-03 00:00
    return run


def test_processes_started_with_different_options_stop_at_once_naming_the_difference(base_store, tmp_path,
                                                                                   redis_server,
                                                                                   featurestore_script):
    run = Run.fresh(base_store, tmp_path, redis_server.fresh(4))
    commands = cluster_commands(run, featurestore_script)
    commands[1][commands[1].index("--offline-parts")] = "--no-offline-parts"  # the row log off on one process
    started = time.monotonic()
    results = finish([start(command, tmp_path) for command in commands], timeout=120)
    assert time.monotonic() - started < 60  # Bytewax alone: forever
    for code, err in results:
        assert code == 1, err
        assert ("error: the processes of the cluster were started with different options: offline_parts is True on "
                "process 0 but False on process 1; start every process with the same command") in err
        assert "Traceback" not in err
    assert not run.jsonl.exists() and not (run.root / "store" / "kind=stream").exists()  # nothing ran
    with connect(run.online_url, readonly=True) as online:
        assert online.rows("research") == []


def test_a_process_not_started_is_named_instead_of_waited_for(base_store, tmp_path, redis_server,
                                                             featurestore_script):
    run = Run.fresh(base_store, tmp_path, redis_server.fresh(4))
    command = cluster_commands(run, featurestore_script, "--join-timeout", "2")[0]
    ((code, err),) = finish([start(command, tmp_path)], timeout=60)
    assert code == 1 and "process(es) 1 of the cluster did not join process 0" in err, err


@pytest.mark.slow
def test_two_processes_replay_20_symbols_into_redis_as_one_process_does(base_store, reference, tmp_path,
                                                                       redis_server, featurestore_script):
    run = Run.fresh(base_store, tmp_path, redis_server.fresh(4) + "?ttl=1d")
    for code, err in finish([start(command, tmp_path) for command in cluster_commands(run, featurestore_script)]):
        assert code == 0, err
    assert run.outputs() == reference.outputs()


def committed_epoch(recovery: Path) -> int:
    """The epoch every recovery partition has committed a snapshot of (a restart resumes after it; 0: none yet)."""
    epochs = []
    for partition in recovery.glob("part-*.sqlite3"):
        try:
            with sqlite3.connect(f"{partition.as_uri()}?mode=ro", uri=True, timeout=1) as db:
                epochs.append(db.execute("SELECT coalesce(max(commit_epoch), 0) FROM commits").fetchone()[0])
        except sqlite3.OperationalError:  # being written: not committed yet, as far as we know
            epochs.append(0)
    return min(epochs, default=0)


def execution_log(recovery: Path) -> dict[int, int]:
    """Bytewax's record of the executions: execution number -> the epoch it resumed from."""
    resumed = {}
    for partition in recovery.glob("part-*.sqlite3"):
        with sqlite3.connect(partition) as db:
            resumed.update(db.execute("SELECT ex_num, resume_epoch FROM exs").fetchall())
    return resumed


@pytest.mark.slow
def test_a_process_killed_mid_run_stops_the_other_and_a_restart_ends_as_an_uninterrupted_run(
        base_store, reference, tmp_path, redis_server, featurestore_script):
    seed = int.from_bytes(os.urandom(4), "little")
    rng = random.Random(seed)
    run = Run.fresh(base_store, tmp_path, redis_server.fresh(5) + "?ttl=1d")
    recovery = tmp_path / "recovery"
    recovery.mkdir()
    subprocess.run([sys.executable, "-m", "bytewax.recovery", str(recovery), "2"], check=True)
    # ~48 s of paced replay when uninterrupted, a snapshot every second: the kill lands long before the end
    # however slowly a loaded machine starts the processes; the restart replays the rest unpaced
    commands = cluster_commands(run, featurestore_script, "--speed", "1800", "--recovery-dir", recovery,
                                "--snapshot-interval", "1")
    processes = [start(command, tmp_path) for command in commands]
    deadline = time.monotonic() + 90
    while not (run.jsonl.exists() and run.jsonl.stat().st_size and committed_epoch(recovery) >= 2):
        assert time.monotonic() < deadline and all(p.poll() is None for p in processes), (
            "the cluster wrote no row and committed no snapshot within 90 s")
        time.sleep(0.02)
    time.sleep(rng.uniform(0.0, 1.5))  # a random moment after rows were written and a snapshot committed
    victim = rng.choice([0, 1])
    context = f"seed {seed}, process {victim} killed"
    processes[victim].send_signal(signal.SIGKILL)
    killed_at = len(run.jsonl.read_text().splitlines())
    (code, err), _ = finish([processes[1 - victim], processes[victim]], timeout=60)  # the survivor stops by itself
    assert code == 1 and "this process lost the cluster" in err and "restart every process with the same command" in err, (
        f"{context}: {err}")
    assert 0 < killed_at < ROWS, context

    restart = [[("0" if previous == "--speed" else arg) for previous, arg in zip(["", *c], c, strict=False)]
               for c in commands]
    for code, err in finish([start(command, tmp_path) for command in restart]):
        assert code == 0, f"{context}: {err}"
    resumed = execution_log(recovery)
    assert len(resumed) == 2 and max(resumed.values()) > 1, f"{context}: no execution resumed a snapshot"
    lines, rows, parts = run.outputs()
    assert len(lines) == len(set(lines)) == ROWS, context  # nothing lost, nothing doubled
    assert (lines, rows, parts) == reference.outputs(), context


class Recorder(DynamicSink):
    """Records (worker index, key) of every item its partitions write."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, str]] = []

    def build(self, step_id: str, worker_index: int, worker_count: int) -> StatelessSinkPartition:
        recorder = self

        class Partition(StatelessSinkPartition):
            def write_batch(self, items: list) -> None:
                recorder.seen.extend((worker_index, key) for key, _ in items)

        return Partition()


def test_routing_keys_put_each_symbol_on_the_worker_bytewax_sends_it_to_evenly():
    keys = Placement(workers=3).keys(SYMBOLS)
    assert [route(key, 3) for key in keys.values()] == [k % 3 for k in range(len(SYMBOLS))]  # dealt out in turn
    flow = Dataflow("routing")
    keyed = op.key_on("key", op.input("in", flow, TestingSource(list(keys.values()))), lambda key: key)
    recorder = Recorder()
    op.output("out", op.stateful_map("step", keyed, lambda state, key: (state, key)), recorder)
    run_flow(flow, workers=3)
    assert sorted(recorder.seen) == sorted((route(key, 3), key) for key in keys.values())  # Bytewax agrees
    halves = [Placement(process_id=p, processes=2, workers=2).local(Placement(0, 2, 2).keys(SYMBOLS)) for p in (0, 1)]
    assert sorted(halves[0] + halves[1]) == sorted(SYMBOLS) and len(halves[0]) == len(halves[1]) == 10


def test_join_names_what_is_wrong_instead_of_waiting():
    addresses = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    with pytest.raises(FeatureStoreError, match=r"process 0 of the cluster did not answer at 127.0.0.1:\d+ within "
                                                r"0.5 s; start it \(--process-id 0\)"):
        join(1, addresses, {}, timeout_s=0.5)
    with pytest.raises(FeatureStoreError, match=r"--process-id 2 is not an index of the 2 addresses \(0 to 1\)"):
        join(2, addresses, {})
    with pytest.raises(FeatureStoreError, match="needs both the process id and the addresses"):
        join(0, None, {})
    with pytest.raises(FeatureStoreError, match=r"cluster address 'host0' is not host:port"):
        join(0, ["host0", "host1:2101"], {})
    assert join(None, None, {"jsonl": None}, shared={"now": "t"}) == {"now": "t"}  # not a cluster: nothing to agree

    def stray() -> None:  # something else talking to process 0's port
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", int(addresses[0].rsplit(":", 1)[1]))) as conn:
                    conn.sendall(b"GET / HTTP/1.1\r\n\r\n")
                    return
            except OSError:
                time.sleep(0.02)

    with ThreadPoolExecutor(1) as pool:
        pool.submit(stray)
        with pytest.raises(FeatureStoreError, match=r"is not a featurestore process of this cluster"):
            join(0, addresses, {}, timeout_s=10)
