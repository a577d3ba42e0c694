"""The streaming dataflow, run by Bytewax's own runners and by the CLI: rows equal the backfill bit for bit
(batched, bar by bar, warm or cold), bad bars are counted and not applied, the live ccxt source survives
failures and closes gaps (and runs from the CLI against a local exchange), and several workers or processes
(Bytewax's runner, or ``featurestore stream --process-id/--addresses``) give the rows of one."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from bytewax.testing import TestingSource, run_main
from test_exchange_ingest import T0, LocalBinance, local_client, ms_to_dt

from conftest import FEATURESTORE
from featurestore.backfill import backfill
from featurestore.bars import BAR_COLUMNS, TS_DTYPE
from featurestore.builtin_views import RESEARCH
from featurestore.errors import ExchangeError, FeatureStoreError
from featurestore.ingest import ingest_exchange, ingest_synthetic
from featurestore.offline import read_features
from featurestore.online.sqlite import SqliteOnlineStore
from featurestore.sources.exchange import EXCHANGE_URL_ENV
from featurestore.store import Store
from streaming.clock import fixed_clock, to_ms
from streaming.flow import CONFIG_ENV, StreamConfig, build_flow
from streaming.items import Bar, BarBatch
from streaming.runner import run_flow
from streaming.sinks import parts_dir, read_jsonl, read_metrics, scan_parts
from streaming.sinks.offline_parts import CELL_BARS

NOW = datetime(2030, 1, 1, tzinfo=UTC)
SINCE, START, UNTIL = (datetime(2024, 5, d, tzinfo=UTC) for d in (1, 2, 3))
SYMBOLS = ["BTC/USDT", "ETH/USDT"]
NAMES = RESEARCH.feature_names
MINUTE = timedelta(minutes=1)


@pytest.fixture(scope="module")
def base_store(tmp_path_factory) -> Store:
    """Two days of 1m synthetic bars for two symbols, backfilled for ``research``."""
    store = Store(tmp_path_factory.mktemp("flow") / "store")
    ingest_synthetic(store, SYMBOLS, "1m", since=SINCE, until=UNTIL, now=NOW)
    backfill(store, RESEARCH, now=NOW, progress=False)
    return store


@pytest.fixture
def store(base_store, tmp_path) -> Store:
    """A private copy (each flow writes its own online store)."""
    return Store(shutil.copytree(base_store.root, tmp_path / "store"))


def stream_config(store: Store, tmp_path: Path, **options) -> StreamConfig:
    return StreamConfig(**{"store": str(store.root), "view": "research", "symbols": SYMBOLS,
                           "jsonl": str(tmp_path / "rows.jsonl"), **options})


def backfilled(store: Store, after: datetime | None = None) -> pl.DataFrame:
    rows = read_features(store, RESEARCH).select("symbol", "ts", *NAMES).collect()
    return (rows if after is None else rows.filter(pl.col("ts") > after)).sort("symbol", "ts")


def assert_bit_identical(got: pl.DataFrame, expected: pl.DataFrame) -> None:
    """Same rows in the same order, nulls in the same places, every float64 with the same bits."""
    assert got.select("symbol", "ts").equals(expected.select("symbol", "ts"))
    for name in NAMES:
        a, b = got[name], expected[name]
        assert a.is_null().equals(b.is_null()), f"{name}: nulls differ"
        bits_a, bits_b = (s.fill_null(0.0).to_numpy().view(np.int64) for s in (a, b))
        assert np.array_equal(bits_a, bits_b), f"{name}: values differ"


def online_rows(store: Store) -> dict[str, tuple]:
    with SqliteOnlineStore(store.online_path, readonly=True) as online:
        return {r.symbol: (r.ts, r.view_version, r.features) for r in online.rows("research")}


def assert_online_holds_newest(store: Store, expected: pl.DataFrame) -> None:
    newest = expected.group_by("symbol", maintain_order=True).last()
    assert online_rows(store) == {
        row["symbol"]: (row["ts"], RESEARCH.version, {n: row[n] for n in NAMES}) for row in newest.iter_rows(named=True)}


# ---------------------------------------------------------------------------------------------- replay


@pytest.mark.parametrize("batch", [1000, 7, 1])
def test_replay_rows_equal_the_backfill_batched_and_bar_by_bar(store, tmp_path, batch):
    config = stream_config(store, tmp_path, start=START.isoformat(), batch=batch)  # the row log is on by default
    run_main(build_flow(config, clock=fixed_clock(NOW)))
    expected = backfilled(store, after=START)
    got = read_jsonl(tmp_path / "rows.jsonl", NAMES).sort("symbol", "ts")
    assert got.height == 2 * 24 * 60
    assert_bit_identical(got, expected)
    assert got.filter(pl.col("ts") == START + MINUTE).null_count().sum_horizontal().item() == 0  # warm from row 1
    assert_online_holds_newest(store, expected)
    metrics = read_metrics(config.metrics_path)
    assert metrics["total"] == {"received": 2880, "applied": 2880, "duplicates": 0, "late": 0, "conflicts": 0}
    parts = scan_parts(store, RESEARCH).collect().sort("symbol", "ts")
    assert_bit_identical(parts.select("symbol", "ts", *NAMES), expected)
    assert parts["created_at"].unique().to_list() == [NOW] and parts["view_version"].unique().to_list() == [
        RESEARCH.version]
    cells = {ts // (CELL_BARS * 60_000) for ts in range(to_ms(START) + 60_000, to_ms(UNTIL) + 60_000, 60_000)}
    assert len(list(parts_dir(store, RESEARCH).rglob("part-*.parquet"))) == 2 * len(cells)  # a part per day of rows


def test_a_cold_replay_from_the_first_bar_equals_the_backfill_warm_up_nulls_included(store, tmp_path):
    run_main(build_flow(stream_config(store, tmp_path, batch=500), clock=fixed_clock(NOW)))
    got = read_jsonl(tmp_path / "rows.jsonl", NAMES).sort("symbol", "ts")
    assert got.height == 2 * 2 * 24 * 60
    assert got["rv_72"].null_count() == 2 * 72  # the first 72 rows of each symbol: window not full
    assert_bit_identical(got, backfilled(store))


def test_a_stopped_replay_continues_from_where_it_ended(store, tmp_path):
    middle = START + timedelta(hours=10)
    first = stream_config(store, tmp_path, start=START.isoformat(), until=middle.isoformat(), batch=64)
    run_main(build_flow(first, clock=fixed_clock(NOW)))
    second = replace(first, start=middle.isoformat(), until=None, jsonl=str(tmp_path / "second.jsonl"))
    run_main(build_flow(second, clock=fixed_clock(NOW)))
    got = pl.concat([read_jsonl(tmp_path / name, NAMES) for name in ("rows.jsonl", "second.jsonl")])
    assert_bit_identical(got.sort("symbol", "ts"), backfilled(store, after=START))
    # the row log: the second run added its rows to the part the first one left mid-day, each row once
    logged = scan_parts(store, RESEARCH).collect().sort("symbol", "ts")
    assert_bit_identical(logged.select("symbol", "ts", *NAMES), backfilled(store, after=START))
    run_main(build_flow(replace(first, jsonl=None), clock=fixed_clock(NOW + timedelta(days=1))))  # repeated
    assert scan_parts(store, RESEARCH).collect().sort("symbol", "ts").equals(logged)  # first values kept
    assert_online_holds_newest(store, backfilled(store))


# ---------------------------------------------------------------------------------------------- bad bars


@pytest.mark.parametrize("handed_over", [1, 64])  # Bars handed to the feature step one by one, or in runs of 64
def test_duplicate_late_and_conflicting_bars_are_counted_and_not_applied(store, tmp_path, caplog, handed_over):
    bars = store.scan_bars("synthetic", "1m", ["BTC/USDT"]).select(BAR_COLUMNS).collect()
    replayed = bars.filter(pl.col("ts") >= START).head(200)
    b = [Bar(s, to_ms(ts), *prices) for s, ts, *prices in replayed.rows()]
    conflicting = b[20]._replace(close=b[20].close * 1.001)
    items = [*b[:11], b[10], *b[11:21], conflicting, *b[21:40], b[41], b[40], *b[42:151], b[5], *b[151:161],
             BarBatch("BTC/USDT", replayed.slice(160, 11)), BarBatch("BTC/USDT", replayed.slice(171, 29))]
    # b10 again: duplicate; b20 with another close: conflict; b40 after b41: late; b5 far back: late (not
    # remembered); the first batch starts with b160 again: duplicate, then bar by bar; the last batch in order.
    # Handed over 64 at a time, runs in order take the engine's batch path, the others go bar by bar.
    with caplog.at_level("WARNING", logger="streaming.keyed_state"):
        run_main(build_flow(stream_config(store, tmp_path), clock=fixed_clock(NOW),
                            source=TestingSource(items, batch_size=handed_over)))

    fed = pl.concat([bars.filter(pl.col("ts") < START), replayed.filter(pl.int_range(pl.len()) != 40)])
    expected = RESEARCH.compute_symbol(fed).filter(pl.col("ts") > START)
    got = read_jsonl(tmp_path / "rows.jsonl", NAMES)
    assert_bit_identical(got, expected)  # in the order applied; b40's row never emitted
    assert read_metrics(stream_config(store, tmp_path).metrics_path)["symbols"]["BTC/USDT"] == {
        "received": 204, "applied": 199, "duplicates": 2, "late": 2, "conflicts": 1}
    warnings = [r.getMessage() for r in caplog.records]
    assert sum("conflicts with the bar applied then" in m for m in warnings) == 1
    assert sum("late bar at" in m for m in warnings) == 2
    assert online_rows(store)["BTC/USDT"][0] == expected["ts"][-1]


# ---------------------------------------------------------------------------------------------- live


def market_rows(server: LocalBinance, until: int, *, after: int) -> pl.DataFrame:
    """The research rows after ``after`` (epoch ms) of the exchange's 1m bars of both symbols before ``until``,
    computed by the backfill's code from the bars as the exchange serves them."""
    expected = []
    for pair in ("BTCUSDT", "ETHUSDT"):
        market = pl.DataFrame(server.closed_bars(pair, step=60_000, until_ms=until), orient="row",
                              schema={"symbol": pl.String, "ts": pl.Datetime("us", "UTC"),
                                      **{c: pl.Float64 for c in BAR_COLUMNS[2:]}}).with_columns(pl.col("ts").cast(TS_DTYPE))
        assert market.height == (until - T0) // 60_000
        expected.append(RESEARCH.compute_symbol(market).filter(pl.col("ts") > ms_to_dt(after)))
    return pl.concat(expected)


class TickingBinance(LocalBinance):
    """The local Binance whose clock moves ``tick_ms`` forward after every klines answer (even a failed one)."""

    def __init__(self, now_ms: int, tick_ms: int) -> None:
        super().__init__(now_ms)
        self.tick_ms = tick_ms

    def _respond(self, path: str, query: dict[str, str]) -> tuple[int, object, float]:
        answer = super()._respond(path, query)
        if path == "/api/v3/klines":
            with self._lock:
                self.now_ms += self.tick_ms
        return answer


def test_live_source_starts_warm_survives_failures_and_refetches_gaps(tmp_path, caplog):
    step = 60_000
    server = TickingBinance(now_ms=T0 + 300 * step, tick_ms=3 * step)
    try:
        store = Store(tmp_path / "store")
        ingest_exchange(store, local_client(server), SYMBOLS, "1m", since=ms_to_dt(T0),
                        now=ms_to_dt(T0 + 300 * step), progress=False)  # bars 0-299 stored: the warm history
        server.requests.clear()
        server.faults.extend(["-", "-", "503", "503-html", "503"])  # live requests 3-5 fail
        until = T0 + 400 * step
        config = StreamConfig(store=str(store.root), view="research", symbols=SYMBOLS, source="ccxt",
                              exchange="binance", until=ms_to_dt(until).isoformat(), jsonl=str(tmp_path / "rows.jsonl"))
        with caplog.at_level("WARNING", logger="streaming.sources.live"):
            run_main(build_flow(config, clock=lambda: server.now_ms, client_factory=lambda: local_client(server)))
    finally:
        server.close()
    assert server.unexpected == []

    got = read_jsonl(tmp_path / "rows.jsonl", NAMES).sort("symbol", "ts")
    assert_bit_identical(got, market_rows(server, until, after=T0 + 300 * step))  # bars 300-399 once each, warm
    assert got.group_by("symbol").first()["rv_72"].null_count() == 0

    klines = [(q["symbol"], int(q["startTime"])) for path, q in server.requests if path == "/api/v3/klines"]
    assert {start for _, start in klines[:2]} == {T0 + 300 * step}  # both start right after the stored bars
    assert sum("poll failed" in r.getMessage() for r in caplog.records) == 3
    for k in (2, 3, 4):  # the failed polls: the symbol's next poll asks again from the same bar...
        symbol, start = klines[k]
        after = [s for sym, s in klines[k + 1:] if sym == symbol]
        assert after[0] == start
        # ...and, the clock having moved on meanwhile, fetches the missed bars in one go
        assert next(s for s in after if s != start) - start > step


@pytest.mark.slow
def test_cli_ingests_history_then_streams_live_bars_from_the_exchange(tmp_path):
    """``featurestore ingest --source ccxt`` then ``featurestore stream --source ccxt``, as a user runs them, with
    ccxt's HTTP layer sent to the local Binance by ``FEATURESTORE_EXCHANGE_URL``; the stream keeps the bars it
    applies, so a backfill and parity agree with what was served without an ingest, and a restart goes on after them."""
    step, history, until, later = 60_000, T0 + 300 * 60_000, T0 + 400 * 60_000, T0 + 460 * 60_000
    server = LocalBinance(now_ms=int(time.time() * 1000) + 86_400_000)  # every 2024 bar closed, as for the CLI's clock
    for pair in ("BTCUSDT", "ETHUSDT"):
        server.halted_at[pair] = until  # a market that ends: no need to page through 2024-2026
    env = {**os.environ, EXCHANGE_URL_ENV: server.base, "NO_PROXY": "127.0.0.1"}
    env.pop("FEATURESTORE_HOME", None)
    store = tmp_path / "store"

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([FEATURESTORE, *args, "--store", str(store)], env=env, cwd=tmp_path, capture_output=True,
                              text=True, timeout=120)

    def stream_until(end: int, jsonl: str) -> tuple[subprocess.CompletedProcess, set[int]]:
        """``featurestore stream`` live until ``end``: the process, and the start times of the klines it asked for."""
        server.requests.clear()
        done = cli("stream", "--source", "ccxt", "--exchange", "binance", "--view", "research", "--symbols",
                   ",".join(SYMBOLS), "--until", ms_to_dt(end).isoformat(), "--poll-interval", "0.1",
                   "--jsonl", str(tmp_path / jsonl))
        assert done.returncode == 0, done.stderr
        return done, {int(q["startTime"]) for p, q in server.requests if p == "/api/v3/klines"}

    def assert_stored_bars_are_the_exchanges(end: int) -> None:
        assert Store(store).scan_bars("binance", "1m").select(BAR_COLUMNS).collect().rows() == [
            bar for pair in ("BTCUSDT", "ETHUSDT") for bar in server.closed_bars(pair, step, until_ms=end)]

    try:
        ingested = cli("ingest", "--source", "ccxt", "--exchange", "binance", "--symbols", ",".join(SYMBOLS),
                       "--timeframe", "1m", "--since", "2024-01-01", "--until", ms_to_dt(history).isoformat())
        assert ingested.returncode == 0, ingested.stderr
        assert "BTC/USDT: 300 new bars" in ingested.stdout and "ETH/USDT: 300 new bars" in ingested.stdout
        assert_stored_bars_are_the_exchanges(history)

        streamed, first_klines = stream_until(until, "rows.jsonl")
        # The flow kept the bars it applied (delta files): a backfill and parity read them without an ingest...
        assert_stored_bars_are_the_exchanges(until)
        assert any(store.glob("kind=bars/**/delta-*.parquet"))
        assert cli("backfill", "--view", "research").returncode == 0
        checked = cli("parity", "--view", "research")
        assert checked.returncode == 0 and "PARITY OK" in checked.stdout, checked.stdout + checked.stderr
        # ...and a restart warms from them and goes on after them.
        for pair in ("BTCUSDT", "ETHUSDT"):
            server.halted_at[pair] = later
        _, restart_klines = stream_until(later, "restarted.jsonl")
    finally:
        server.close()
    assert server.unexpected == []
    assert first_klines == {history}  # after the history
    expected = market_rows(server, until, after=history)
    served = read_jsonl(tmp_path / "rows.jsonl", NAMES).sort("symbol", "ts")
    assert_bit_identical(served, expected)
    assert "2 symbol(s), 200 bars received, 200 applied, 0 dropped" in streamed.stdout
    assert_bit_identical(read_features(Store(store), RESEARCH).select("symbol", "ts", *NAMES).collect()
                         .filter(pl.col("ts") > ms_to_dt(history)).sort("symbol", "ts"), served)
    assert restart_klines == {until}
    after_restart = market_rows(server, later, after=until)
    assert_bit_identical(read_jsonl(tmp_path / "restarted.jsonl", NAMES).sort("symbol", "ts"), after_restart)
    assert_online_holds_newest(Store(store), after_restart)


# ---------------------------------------------------------------------------------------------- scale-out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def bytewax_run(config: StreamConfig, *options: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, CONFIG_ENV: config.to_json()}
    return subprocess.Popen([sys.executable, "-m", "bytewax.run", "streaming.flow:build_flow_from_env()", *options],
                            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finished(proc: subprocess.Popen) -> None:
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err


@pytest.mark.slow
def test_two_workers_and_a_two_process_cluster_give_the_rows_of_one(base_store, tmp_path):
    runs = {}
    for name in ("single", "workers", "cluster"):
        store = Store(shutil.copytree(base_store.root, tmp_path / name / "store"))
        runs[name] = (store, stream_config(store, tmp_path / name, start=START.isoformat(), batch=100,
                                           offline_parts=True, symbols=[*SYMBOLS, "BTC/USDT:USDT"]))
    # a third symbol, so two workers really split the partitions
    for store, _ in runs.values():
        ingest_synthetic(store, ["BTC/USDT:USDT"], "1m", since=SINCE, until=UNTIL, now=NOW)
        backfill(store, RESEARCH, now=NOW, progress=False)

    run_main(build_flow(runs["single"][1], clock=fixed_clock(NOW)))
    finished(bytewax_run(runs["workers"][1], "-w", "2", cwd=tmp_path))
    addresses = f"127.0.0.1:{free_port()};127.0.0.1:{free_port()}"
    cluster = [bytewax_run(runs["cluster"][1], "-i", str(i), "-a", addresses, cwd=tmp_path) for i in (0, 1)]
    for proc in cluster:
        finished(proc)

    lines = {name: sorted(Path(config.jsonl).read_text().splitlines()) for name, (_, config) in runs.items()}
    assert len(lines["single"]) == 3 * 24 * 60
    assert lines["workers"] == lines["single"] and lines["cluster"] == lines["single"]
    expected = online_rows(runs["single"][0])
    assert len(expected) == 3
    for name in ("workers", "cluster"):
        store, config = runs[name]
        assert {s: (ts, v) for s, (ts, v, _) in online_rows(store).items()} == {
            s: (ts, v) for s, (ts, v, _) in expected.items()}
        assert {s: f for s, (_, _, f) in online_rows(store).items()} == {s: f for s, (_, _, f) in expected.items()}
        parts = scan_parts(store, RESEARCH).drop("created_at").collect().sort("symbol", "ts")
        assert parts.equals(scan_parts(runs["single"][0], RESEARCH).drop("created_at").collect().sort("symbol", "ts"))
        assert json.loads(Path(config.metrics_path).read_text())["total"]["applied"] == 3 * 24 * 60


def test_live_source_refuses_to_start_without_history_and_stops_on_an_unknown_symbol(tmp_path):
    server = LocalBinance(now_ms=T0 + 100 * 60_000)
    try:
        for symbol, start, cause, message in [
            ("BTC/USDT", None, FeatureStoreError, "no stored 1m bars of BTC/USDT from binance to start the live stream "
                                                  "after; ingest some history first"),
            ("DOGE/USDT", ms_to_dt(T0).isoformat(), ExchangeError, "BadSymbol"),
        ]:
            config = StreamConfig(store=str(tmp_path / "store"), view="research", symbols=[symbol], source="ccxt",
                                  start=start, until=ms_to_dt(T0 + 50 * 60_000).isoformat())
            flow = build_flow(config, clock=lambda: server.now_ms, client_factory=lambda: local_client(server))
            with pytest.raises(cause, match=message):  # as itself: the CLI prints it as a user error
                run_flow(flow)
        assert server.klines_starts() == []  # ccxt knew from exchangeInfo that DOGE/USDT does not exist
    finally:
        server.close()


@pytest.mark.slow
def test_two_cli_processes_given_process_id_and_addresses_give_the_rows_of_one(base_store, tmp_path):
    """``featurestore stream --process-id i --addresses "a;b"`` twice on this machine, sharing the store (its
    SQLite online store) and naming the same JSONL file, which one of them writes."""
    until = START + timedelta(hours=6)
    single, cluster = (Store(shutil.copytree(base_store.root, tmp_path / name / "store")) for name in ("one", "two"))
    run_main(build_flow(stream_config(single, tmp_path / "one", start=START.isoformat(), until=until.isoformat(),
                                      batch=60, offline_parts=True), clock=fixed_clock(NOW)))
    addresses = f"127.0.0.1:{free_port()};127.0.0.1:{free_port()}"
    command = [FEATURESTORE, "stream", "--store", str(cluster.root), "--view", "research", "--from", START.isoformat(),
               "--until", until.isoformat(), "--batch", "60", "--offline-parts", "--jsonl", str(tmp_path / "two" / "rows.jsonl"),
               "--addresses", addresses]
    processes = [subprocess.Popen([*command, "--process-id", str(i)], cwd=tmp_path, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for i in (0, 1)]
    try:  # a process whose peer never connects waits for it: the timeout makes that fail, not hang
        results = [(proc.communicate(timeout=120), proc.returncode) for proc in processes]
    finally:
        for proc in processes:
            proc.kill()
    for (_, err), code in results:
        assert code == 0, err
    assert read_metrics(cluster.stream_metrics_path("research"))["total"]["applied"] == 720

    lines = [sorted(Path(tmp_path / name / "rows.jsonl").read_text().splitlines()) for name in ("one", "two")]
    assert len(lines[0]) == 2 * 6 * 60 and lines[1] == lines[0]
    assert online_rows(cluster) == online_rows(single)
    parts = [scan_parts(store, RESEARCH).drop("created_at").collect().sort("symbol", "ts") for store in (single, cluster)]
    assert parts[1].equals(parts[0])
