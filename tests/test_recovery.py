"""Recovery: the JSONL sink cuts back to its committed offset, and a flow SIGKILLed after a committed snapshot
(one worker under Bytewax's runner, two through the CLI) and restarted with recovery ends with exactly the rows
of an uninterrupted run."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest
from bytewax.testing import run_main

from conftest import FEATURESTORE
from featurestore.backfill import backfill
from featurestore.builtin_views import RESEARCH
from featurestore.errors import FeatureStoreError
from featurestore.ingest import ingest_synthetic
from featurestore.offline import read_features
from featurestore.online.sqlite import SqliteOnlineStore
from featurestore.store import Store
from streaming.clock import fixed_clock
from streaming.flow import CONFIG_ENV, StreamConfig, build_flow
from streaming.items import Counts, FeatureRows
from streaming.sinks import JsonlSink, read_jsonl, read_metrics, scan_parts

NAMES = RESEARCH.feature_names
NOW = datetime(2030, 1, 1, tzinfo=UTC)
SYMBOLS = ["BTC/USDT", "ETH/USDT"]
START = datetime(2024, 5, 2, 12, tzinfo=UTC)  # 720 bars per symbol to stream, warmed on 36 hours before


def rows(symbol: str, first_ms: int, n: int) -> FeatureRows:
    return FeatureRows(symbol, [first_ms + 60_000 * k for k in range(n)],
                       [(float(k),) * len(NAMES) for k in range(n)], Counts(n, n))


def test_jsonl_sink_resumes_at_the_committed_offset(tmp_path):
    path = tmp_path / "rows.jsonl"
    sink = JsonlSink(path, RESEARCH, NAMES)
    part = sink.build_part("jsonl", "jsonl", None)
    part.write_batch([rows("A", 0, 3)])
    committed, committed_text = part.snapshot(), path.read_text()
    part.write_batch([rows("A", 180_000, 2)])  # written after the snapshot, then the process dies
    part.close()
    resumed = sink.build_part("jsonl", "jsonl", committed)
    assert path.read_text() == committed_text  # cut back before anything is written
    resumed.write_batch([rows("A", 180_000, 2)])  # Bytewax replays what followed the snapshot
    resumed.close()
    got = read_jsonl(path, NAMES)
    assert got["ts"].dt.epoch("ms").to_list() == [0, 60_000, 120_000, 180_000, 240_000]
    fresh = sink.build_part("jsonl", "jsonl", None)  # a new run (no recovery state) starts empty
    fresh.close()
    assert path.read_text() == ""


def test_jsonl_sink_refuses_a_file_cut_below_the_committed_offset(tmp_path):
    path = tmp_path / "rows.jsonl"
    part = JsonlSink(path, RESEARCH, NAMES).build_part("jsonl", "jsonl", None)
    part.write_batch([rows("A", 0, 3)])
    offset = part.snapshot()
    part.close()
    path.write_text("")
    with pytest.raises(FeatureStoreError, match="changed outside the flow"):
        JsonlSink(path, RESEARCH, NAMES).build_part("jsonl", "jsonl", offset)


@pytest.fixture(scope="module")
def base_store(tmp_path_factory) -> Store:
    store = Store(tmp_path_factory.mktemp("recovery") / "store")
    ingest_synthetic(store, SYMBOLS, "1m", since=datetime(2024, 5, 1, tzinfo=UTC),
                     until=datetime(2024, 5, 3, tzinfo=UTC), now=NOW)
    backfill(store, RESEARCH, now=NOW, progress=False)
    return store


def run_dir(base: Store, root: Path, **options) -> StreamConfig:
    store = Store(shutil.copytree(base.root, root / "store"))
    return StreamConfig(store=str(store.root), view="research", symbols=SYMBOLS, start=START.isoformat(), batch=5,
                        jsonl=str(root / "rows.jsonl"), offline_parts=True, **options)


def online_rows(config: StreamConfig) -> list[tuple]:
    with SqliteOnlineStore(Store(config.store).online_path, readonly=True) as online:
        return [(r.symbol, r.ts, r.view_version, r.features) for r in online.rows("research")]


def parts(config: StreamConfig) -> tuple[list[str], pl.DataFrame]:
    store = Store(config.store)
    names = sorted(p.name for p in (store.root / "kind=stream").rglob("part-*.parquet"))
    return names, scan_parts(store, RESEARCH).drop("created_at").collect().sort("symbol", "ts")


def recovery_progress(recovery: Path) -> tuple[dict[int, int], dict[int, int]]:
    """From Bytewax's recovery partitions: (execution -> the epoch it resumed from, execution -> the epoch a
    restart would resume from now: the lowest frontier of its workers, once every worker has written one)."""
    resumed, workers, fronts = {}, {}, {}
    for partition in recovery.glob("part-*.sqlite3"):
        with closing(sqlite3.connect(partition, timeout=30)) as db:
            if db.execute("SELECT count(*) FROM sqlite_master WHERE name IN ('exs', 'fronts')").fetchone()[0] < 2:
                continue  # the CLI is creating the partitions right now
            for execution, count, epoch in db.execute("SELECT ex_num, worker_count, resume_epoch FROM exs"):
                resumed[execution], workers[execution] = epoch, count
            for execution, worker, frontier in db.execute("SELECT ex_num, worker_index, worker_frontier FROM fronts"):
                fronts.setdefault(execution, {})[worker] = frontier
    saved = {ex: min(fronts[ex].values()) for ex in fronts if ex in workers and len(fronts[ex]) == workers[ex]}
    return resumed, saved


def kill_after_a_snapshot(command: list[str], env: dict[str, str], *, cwd: Path, jsonl: Path, recovery: Path) -> None:
    """Run ``command`` until this execution has committed a snapshot beyond where it resumed and has written
    rows after it (rows a restart must cut back and replay), then SIGKILL it. The replay is paced to last far
    longer than that, so the kill always finds it running (asserted); the deadline only makes a hang fail fast."""
    executions = set(recovery_progress(recovery)[0])
    log = cwd / f"stderr-{len(executions)}.txt"
    with open(log, "w") as stderr:
        proc = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=stderr)
    deadline = time.monotonic() + 120

    def wait_until(done: Callable[[], bool], what: str) -> None:
        while not done():
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"the flow {'ended' if proc.wait() >= 0 else 'hung'} before {what}: {log.read_text()}")
            time.sleep(0.02)

    def snapshot_saved() -> bool:
        resumed, saved = recovery_progress(recovery)
        return any(ex not in executions and saved.get(ex, -1) > epoch for ex, epoch in resumed.items())

    wait_until(snapshot_saved, "a snapshot of its progress was committed")
    size = jsonl.stat().st_size
    wait_until(lambda: jsonl.stat().st_size > size, "it wrote rows after that snapshot")
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, log.read_text()


def replay_command(config: StreamConfig, runner: str, recovery: Path) -> tuple[list[str], dict[str, str]]:
    """The command (and its environment) a user runs: Bytewax's runner with one worker, or the CLI with two."""
    if runner == "bytewax.run, 1 worker":
        return ([sys.executable, "-m", "bytewax.run", "streaming.flow:build_flow_from_env()", "-r", str(recovery),
                 "-s", "1", "-b", "0"], {**os.environ, CONFIG_ENV: config.to_json()})
    return ([FEATURESTORE, "stream", "--store", config.store, "--view", config.view, "--symbols", ",".join(config.symbols),
             "--from", config.start, "--batch", str(config.batch), "--speed", str(config.speed), "--jsonl", config.jsonl,
             "--offline-parts", "--recovery-dir", str(recovery), "--snapshot-interval", "1", "--workers", "2"],
            dict(os.environ))


@pytest.mark.slow
@pytest.mark.parametrize("runner", ["bytewax.run, 1 worker", "featurestore stream --workers 2"])
def test_sigkilled_flow_restarts_to_exactly_the_rows_of_an_uninterrupted_run(base_store, tmp_path, runner):
    reference = run_dir(base_store, tmp_path / "reference")
    run_main(build_flow(reference, clock=fixed_clock(NOW)))

    # Paced to take ~60 s (720 bars a symbol at 720x), snapshots every second: killed twice, a few seconds in.
    config = run_dir(base_store, tmp_path / "killed", speed=720.0)
    recovery = tmp_path / "recovery"
    if runner.startswith("bytewax.run"):
        recovery.mkdir()
        subprocess.run([sys.executable, "-m", "bytewax.recovery", str(recovery), "2"], check=True)
    jsonl = Path(config.jsonl)
    for _ in range(2):
        command, env = replay_command(config, runner, recovery)
        kill_after_a_snapshot(command, env, cwd=tmp_path, jsonl=jsonl, recovery=recovery)
    # The last run unpaced: pacing changes when rows are emitted, never which.
    command, env = replay_command(replace(config, speed=0.0), runner, recovery)
    final = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert final.returncode == 0, final.stderr

    resumed = recovery_progress(recovery)[0]
    epochs = [resumed[ex] for ex in sorted(resumed)]
    assert len(epochs) == 3 and epochs[0] < epochs[1] < epochs[2], f"each restart resumes later: {epochs}"

    lines, reference_lines = jsonl.read_text().splitlines(), Path(reference.jsonl).read_text().splitlines()
    assert len(lines) == len(set(lines)) == 2 * 720  # none duplicated, none missing
    assert sorted(lines) == sorted(reference_lines)
    expected = read_features(Store(reference.store), RESEARCH).filter(pl.col("ts") > START).select(
        "symbol", "ts", *NAMES).collect().sort("symbol", "ts")
    assert read_jsonl(jsonl, NAMES).sort("symbol", "ts").equals(expected, null_equal=True)
    assert online_rows(config) == online_rows(reference)
    names, frame = parts(config)
    reference_names, reference_frame = parts(reference)
    assert names == reference_names and frame.equals(reference_frame, null_equal=True)


MOMENTUM = """
import polars as pl
from featurestore.definitions import FeatureView
MOM = FeatureView("mom", "1m", {"ret": (pl.col("close") / pl.col("close").shift(SHIFT)).log()})
"""


@pytest.mark.slow
@pytest.mark.parametrize("new_bars", [True, False])
def test_recovery_state_of_another_view_version_is_refused_and_nothing_is_written(base_store, tmp_path, run_cli,
                                                                                   hash_tree, new_bars):
    store = Store(shutil.copytree(base_store.root, tmp_path / "store"))
    definitions, recovery, jsonl = tmp_path / "views.py", tmp_path / "recovery", tmp_path / "rows.jsonl"

    def stream(until: str) -> subprocess.CompletedProcess:
        return run_cli("stream", "--store", store.root, "--view", "mom", "--definitions", definitions, "--from",
                       "2024-05-02T12:00", "--until", until, "--jsonl", jsonl, "--recovery-dir", recovery)

    definitions.write_text(MOMENTUM.replace("SHIFT", "3"))
    first = stream("2024-05-02T18:00")
    assert first.returncode == 0, first.stderr
    old = re.search(r"streaming view mom v(\w+)", first.stdout)[1]
    definitions.write_text(MOMENTUM.replace("SHIFT", "4"))  # the same view, edited: a new version
    before = {k: v for k, v in hash_tree(store.root).items() if not k.startswith("registry")}
    jsonl_before = jsonl.read_bytes()

    second = stream("2024-05-02T20:00" if new_bars else "2024-05-02T18:00")

    assert second.returncode == 1
    new = re.search(r"streaming view mom v(\w+)", second.stdout)[1]
    assert new != old
    assert (f"error: the recovery state was built by view 'mom' version {old}, this run computes version {new}: "
            f"delete the recovery directory (or give another) to start over, or stream --view mom@{old}"
            ) in second.stderr
    assert {k: v for k, v in hash_tree(store.root).items() if not k.startswith("registry")} == before
    assert jsonl.read_bytes() == jsonl_before

    # The way out the error names: stream the version the state was built by (from the registry, no file).
    resumed = run_cli("stream", "--store", store.root, "--view", f"mom@{old}", "--from", "2024-05-02T12:00",
                      "--until", "2024-05-02T20:00", "--jsonl", jsonl, "--recovery-dir", recovery)
    assert resumed.returncode == 0, resumed.stderr
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert len(rows) == 2 * 8 * 60 and {row["view_version"] for row in rows} == {old}
    assert read_metrics(store.stream_metrics_path("mom"))["view_version"] == old
