"""Recovery: the JSONL sink cuts back to its committed offset, and a flow SIGKILLed at random moments and
restarted with Bytewax recovery ends with exactly the rows of an uninterrupted run."""

from __future__ import annotations

import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest
from bytewax.testing import run_main

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
from streaming.sinks import JsonlSink, read_jsonl, scan_parts

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


@pytest.mark.slow
def test_sigkilled_flow_restarts_to_exactly_the_rows_of_an_uninterrupted_run(base_store, tmp_path):
    seed = int.from_bytes(os.urandom(4), "little")
    rng = random.Random(seed)
    reference = run_dir(base_store, tmp_path / "reference")
    run_main(build_flow(reference, clock=fixed_clock(NOW)))

    # ~6 s of paced replay per uninterrupted run, snapshots every second
    config = run_dir(base_store, tmp_path / "killed", speed=7200.0)
    recovery = tmp_path / "recovery"
    recovery.mkdir()
    subprocess.run([sys.executable, "-m", "bytewax.recovery", str(recovery), "2"], check=True)
    jsonl = Path(config.jsonl)
    command = [sys.executable, "-m", "bytewax.run", "streaming.flow:build_flow_from_env()",
               "-r", str(recovery), "-s", "1", "-b", "0"]
    env = {**os.environ, CONFIG_ENV: config.to_json()}
    kills, executions = [], 1  # the final run below is one
    for _ in range(3):
        started = time.time_ns()
        proc = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        executions += 1
        deadline = time.monotonic() + 60
        while not (jsonl.exists() and jsonl.stat().st_mtime_ns > started) and proc.poll() is None:
            assert time.monotonic() < deadline, "the flow wrote no row within 60 s"
            time.sleep(0.02)
        time.sleep(rng.uniform(0.3, 2.0))  # a random moment after this execution emitted rows
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills.append(len(jsonl.read_text().splitlines()))
    final = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert final.returncode == 0, final.stderr
    context = f"seed {seed}, rows in the file at each kill: {kills}"
    assert kills, context

    resumed = {}  # Bytewax's execution log: execution number -> the epoch it resumed from
    for partition in recovery.glob("part-*.sqlite3"):
        with sqlite3.connect(partition) as db:
            resumed.update(db.execute("SELECT ex_num, resume_epoch FROM exs").fetchall())
    resumed_at = list(resumed.values())
    assert len(resumed_at) == executions and max(resumed_at) > 1, f"no execution resumed a snapshot ({context})"

    lines, reference_lines = jsonl.read_text().splitlines(), Path(reference.jsonl).read_text().splitlines()
    assert len(lines) == len(set(lines)) == 2 * 720, context  # none duplicated, none missing
    assert sorted(lines) == sorted(reference_lines), context
    expected = read_features(Store(reference.store), RESEARCH).filter(pl.col("ts") > START).select(
        "symbol", "ts", *NAMES).collect().sort("symbol", "ts")
    assert read_jsonl(jsonl, NAMES).sort("symbol", "ts").equals(expected, null_equal=True), context
    assert online_rows(config) == online_rows(reference), context
    names, frame = parts(config)
    reference_names, reference_frame = parts(reference)
    assert names == reference_names and frame.equals(reference_frame, null_equal=True), context
