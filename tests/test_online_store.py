"""The online store, every backend (SQLite and a real redis-server): upsert rules (never back in time), exact values,
readers in another process, writers racing; then what only one backend has (SQLite's WAL, Redis's expiry)."""

from __future__ import annotations

import math
import random
import socket
import sqlite3
import struct
import subprocess
import sys
import textwrap
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from featurestore.errors import FeatureStoreError
from featurestore.online import OnlineRow, connect, sqlite_url
from featurestore.online.redis import CHUNK
from featurestore.online.sqlite import SqliteOnlineStore
from featurestore.store import Store

T = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)


def row(symbol: str = "BTC/USDT", ts: datetime = T, version: str = "v1", value: float | None = 1.0,
        view: str = "research") -> OnlineRow:
    return OnlineRow(view, symbol, ts, version, {"ret_1": value, "rv_24": 2.0}, updated_at=ts + MINUTE)


@pytest.fixture(params=["sqlite", "redis"])
def url(request, tmp_path) -> str:
    """A new, empty online store of each backend."""
    if request.param == "redis":
        return request.getfixturevalue("redis_server").fresh()
    return sqlite_url(Store(tmp_path).online_path)


@pytest.fixture
def online(url):
    with connect(url) as store:
        yield store


def test_a_newer_row_replaces_and_an_older_one_is_ignored(online):
    assert online.put_many([row(value=1.0)]) == 1
    assert online.put_many([row(ts=T + MINUTE, value=2.0)]) == 1
    assert online.put_many([row(ts=T, value=99.0)]) == 0  # older: would move the row back in time
    got = online.latest("research", "BTC/USDT")
    assert (got.ts, got.features["ret_1"], got.updated_at) == (T + MINUTE, 2.0, T + 2 * MINUTE)


def test_same_time_replaces_only_with_the_same_version(online):
    online.put_many([row(value=1.0, version="v1")])
    assert online.put_many([row(value=1.5, version="v1")]) == 1  # a replay of the same row (or a fix) rewrites it
    assert online.put_many([row(value=7.0, version="v2")]) == 0  # another definition at the same time: kept out
    assert online.latest("research", "BTC/USDT").features["ret_1"] == 1.5
    assert online.put_many([row(ts=T + MINUTE, value=3.0, version="v2")]) == 1  # newer: any version
    got = online.latest("research", "BTC/USDT")
    assert (got.view_version, got.features["ret_1"]) == ("v2", 3.0)


def test_replaying_the_same_rows_is_idempotent(online):
    rows = [row(symbol=s, ts=T + k * MINUTE, value=float(k)) for k in range(5) for s in ("A", "B")]
    online.put_many(rows)
    first = online.rows("research")
    online.put_many(rows)
    online.put_many(rows[:4])
    assert online.rows("research") == first
    assert [(r.symbol, r.ts) for r in first] == [("A", T + 4 * MINUTE), ("B", T + 4 * MINUTE)]


def test_get_many_keeps_the_order_asked_and_leaves_out_missing_symbols(online):
    online.put_many([row(symbol=s) for s in ("ETH/USDT", "BTC/USDT", "SOL/USDT")] + [row(symbol="XRP/USDT", view="other")])
    got = online.get_many("research", ["SOL/USDT", "DOGE/USDT", "BTC/USDT"])
    assert list(got) == ["SOL/USDT", "BTC/USDT"]
    assert online.latest("research", "XRP/USDT") is None
    assert online.latest("research", "DOGE/USDT") is None
    assert [r.symbol for r in online.rows("research")] == ["BTC/USDT", "ETH/USDT", "SOL/USDT"]


def test_values_round_trip_bit_for_bit(online):
    values = [0.1 + 0.2, -0.0, 5e-324, 1e308, math.inf, -math.inf, math.nan, None]
    online.put_many([OnlineRow("v", "X", T, "v1", {f"f{k}": v for k, v in enumerate(values)}, T)])
    got = list(online.latest("v", "X").features.values())
    bits = [None if v is None else struct.pack("<d", v) for v in values]
    assert [None if v is None else struct.pack("<d", v) for v in got] == bits


def test_naive_times_are_refused(online):
    with pytest.raises(FeatureStoreError, match="no timezone"):
        online.put_many([row(ts=datetime(2024, 5, 1))])


def test_get_views_reads_a_symbols_rows_of_several_views_in_one_query(online):
    online.put_many([row(view="research"), row(view="daily", ts=T - MINUTE), row(view="research", symbol="ETH/USDT")])
    got = online.get_views(["daily", "research", "absent"], "BTC/USDT")
    assert got == {"daily": online.latest("daily", "BTC/USDT"), "research": online.latest("research", "BTC/USDT")}
    assert got["daily"].ts == T - MINUTE and online.get_views(["research"], "SOL/USDT") == {}


def racing_writer(url: str, start: threading.Barrier, minutes: list[int]) -> None:
    with connect(url) as online:
        start.wait()
        for minute in minutes:
            online.put_many([row(ts=T + minute * MINUTE, value=float(minute))])


def test_racing_writers_never_move_a_row_back_in_time(url):
    # Four writers, each with its own connection, write the same symbol's rows in shuffled orders while a reader
    # polls: the rule is checked where the row is stored (one transaction in SQLite, a Lua script in Redis), so
    # no interleaving can replace a newer row with an older one.
    rng = random.Random(7)
    orders = [rng.sample(range(400), 400) for _ in range(4)]
    start, seen, done = threading.Barrier(5), [], threading.Event()

    def read() -> None:
        with connect(url, readonly=True) as reader:
            start.wait()
            while not done.is_set():
                got = reader.latest("research", "BTC/USDT")
                if got is not None and (not seen or seen[-1] != got.ts):
                    seen.append(got.ts)

    with connect(url) as online:
        online.put_many([row(ts=T - MINUTE)])  # the store exists before the reader opens it
    with ThreadPoolExecutor(5) as pool:
        reader = pool.submit(read)
        list(pool.map(racing_writer, [url] * 4, [start] * 4, orders))
        done.set()
        reader.result()
    assert seen == sorted(seen)
    with connect(url, readonly=True) as online:
        final = online.latest("research", "BTC/USDT")
    assert (final.ts, final.features["ret_1"]) == (T + 399 * MINUTE, 399.0)


# A reader in another process. Between messages it reads freely while the writer writes, and checks what
# holds at any interleaving: the three symbols' rows come from one committed write (one ts, and values that
# match it), and the ts never goes back. Each message "k" from the writer means "write k is committed and I
# wait": the reader must then see exactly k (so reads between writes provably happen) and answers "ok".
READER = textwrap.dedent("""
    import select, sys
    from featurestore.online import connect
    url, t0_ms = sys.argv[1], int(sys.argv[2])
    symbols, previous, reads = ["A", "B", "C"], -1, 0

    def read():
        global previous, reads
        rows = online.get_many("research", symbols)
        if not rows:
            return -1
        ks = {(r.ts.timestamp() * 1000 - t0_ms) / 60_000 for r in rows.values()}
        assert list(rows) == symbols and len(ks) == 1, f"rows of different writes in one read: {rows}"
        (k,) = ks
        for r in rows.values():
            assert r.features == {"ret_1": k, "rv_24": -k} and r.view_version == f"v{k:g}", f"torn row {r}"
        assert k >= previous, f"went back from write {previous} to write {k}"
        previous, reads = k, reads + 1
        return k

    with connect(url, readonly=True) as online:
        print("ready", flush=True)
        while True:
            read()
            if select.select([sys.stdin], [], [], 0)[0]:
                message = sys.stdin.readline().strip()
                if message == "done":
                    break
                k = read()
                assert k == int(message), f"write {message} was committed, the reader saw {k}"
                print("ok", flush=True)
    print(reads, flush=True)
""")


def batch(k: int) -> list[OnlineRow]:
    """Write ``k``: every symbol at ``T + k`` minutes, version ``v<k>``, values ``k`` and ``-k``."""
    ts = T + k * MINUTE
    return [OnlineRow("research", s, ts, f"v{k}", {"ret_1": float(k), "rv_24": float(-k)}, ts) for s in "ABC"]


def test_a_reader_in_another_process_sees_only_whole_committed_writes_never_going_back(url):
    writes, every = 1_000, 50
    with connect(url) as writer:
        writer.put_many(batch(0))  # the file exists before the reader opens it
        reader = subprocess.Popen([sys.executable, "-c", READER, url, str(int(T.timestamp() * 1000))],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert reader.stdout.readline().strip() == "ready", reader.stderr.read()
            for k in range(1, writes + 1):  # one transaction per write, as the flow commits batch by batch
                assert writer.put_many(batch(k)) == 3
                if k % every == 0:  # a barrier: the reader reads between this write and the next
                    reader.stdin.write(f"{k}\n")
                    reader.stdin.flush()
                    assert reader.stdout.readline().strip() == "ok", reader.communicate(timeout=60)[1]
            out, err = reader.communicate("done\n", timeout=60)
        finally:
            reader.kill()
    assert reader.returncode == 0, err
    assert int(out) >= writes // every  # at least one checked read per barrier


# -- every backend against the rule, written once: hypothesis batches ------------------------------------------

batches = st.lists(st.lists(st.tuples(st.sampled_from(["A", "B"]), st.integers(0, 5), st.sampled_from(["v1", "v2"]),
                                      st.integers(0, 3)), max_size=6), min_size=1, max_size=8)


def expected_rows(written: list[list[tuple]]) -> dict[str, tuple]:
    """The rule, applied one row at a time: symbol -> (minute, version, value) of the row that stays."""
    kept: dict[str, tuple] = {}
    for batch in written:
        for symbol, minute, version, value in batch:
            old = kept.get(symbol)
            if old is None or minute > old[0] or (minute == old[0] and version == old[1]):
                kept[symbol] = (minute, version, value)
    return kept


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(written=batches, replayed=st.integers(0, 7))
def test_any_batches_end_as_the_rule_says_and_replaying_them_changes_nothing(backend, written, replayed, tmp_path,
                                                                             redis_server):
    url = redis_server.fresh(1) if backend == "redis" else sqlite_url(tmp_path / f"{uuid.uuid4().hex}.sqlite")
    to_row = lambda s, m, v, x: row(symbol=s, ts=T + m * MINUTE, version=v, value=float(x))  # noqa: E731
    with connect(url) as online:
        for batch in written:
            online.put_many([to_row(*r) for r in batch])
        state = online.rows("research")
        assert {r.symbol: (r.ts, r.view_version, r.features["ret_1"]) for r in state} == {
            s: (T + m * MINUTE, v, float(x)) for s, (m, v, x) in expected_rows(written).items()}
        for batch in written[replayed % len(written):]:  # a resume replays the batches after some snapshot
            online.put_many([to_row(*r) for r in batch])
        assert online.rows("research") == state


# -- SQLite only ------------------------------------------------------------------------------------------------


def test_wal_mode_and_a_read_only_reader(tmp_path):
    path = Store(tmp_path).online_path
    with pytest.raises(FeatureStoreError, match=r"no online store at .*featurestore stream"):
        SqliteOnlineStore(path, readonly=True)
    with SqliteOnlineStore(path) as writer:
        writer.put_many([row()])
        assert writer._con.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    with SqliteOnlineStore(path, readonly=True) as reader:
        assert reader.latest("research", "BTC/USDT").features == {"ret_1": 1.0, "rv_24": 2.0}
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            reader.put_many([row(ts=T + MINUTE)])


def open_and_write(path, start: threading.Barrier, symbol: str) -> None:
    start.wait()
    with SqliteOnlineStore(path) as online:
        for minute in range(3):
            online.put_many([row(symbol=symbol, ts=T + minute * MINUTE)])


def test_writers_opening_a_new_store_at_once_all_succeed(tmp_path):
    # Dataflow workers each open the store as their first rows arrive and write at once: switching a new
    # file to WAL must not fail with "database is locked" (without the lock: ~1 attempt in 6 failed).
    for attempt in range(60):
        path, start = Store(tmp_path / str(attempt)).online_path, threading.Barrier(2)
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(open_and_write, [path] * 2, [start] * 2, ["BTC/USDT", "ETH/USDT"]))
        with SqliteOnlineStore(path, readonly=True) as online:
            assert [r.ts for r in online.rows("research")] == [T + 2 * MINUTE] * 2


# -- Redis only -------------------------------------------------------------------------------------------------


def test_redis_keys_carry_the_version_and_a_newer_version_replaces_the_old_ones_row(redis_server):
    url = redis_server.fresh()
    with connect(url) as online:
        online.put_many([row(version="v1"), row(symbol="ETH/USDT", version="v1")])
        online.put_many([row(ts=T + MINUTE, version="v2")])
    with redis.Redis.from_url(url) as raw:
        assert sorted(raw.keys()) == [b"fs:{BTC/USDT}:research", b"fs:{BTC/USDT}:research:v2",
                                      b"fs:{ETH/USDT}:research", b"fs:{ETH/USDT}:research:v1"]
        assert raw.get("fs:{BTC/USDT}:research") == b"v2"
        stored = raw.hgetall("fs:{BTC/USDT}:research:v2")
    assert stored == {b"ts": str(int((T + MINUTE).timestamp() * 1000)).encode(),
                      b"updated_at": str(int((T + 2 * MINUTE).timestamp() * 1000)).encode(),
                      b"features": b'{"ret_1": 1.0, "rv_24": 2.0}'}


def test_redis_rows_expire_the_views_ttl_after_each_write(redis_server):
    url = redis_server.fresh()
    with connect(url, ttl={"research": timedelta(minutes=1)}) as online:  # the writer's default for its view
        online.put_many([row(), row(view="other")])
        assert 59_000 < online.expiry_ms("research", "BTC/USDT") <= 60_000
        assert online.expiry_ms("other", "BTC/USDT") is None  # no TTL given for it: kept
        assert online.expiry_ms("research", "ETH/USDT") is None  # no row
    with connect(url + "?ttl=other=2h", ttl={"research": timedelta(minutes=1)}) as online:  # the URL's wins
        online.put_many([row(ts=T + MINUTE), row(view="other", ts=T + MINUTE)])
        assert 7_100_000 < online.expiry_ms("other", "BTC/USDT") <= 7_200_000
        assert online.expiry_ms("research", "BTC/USDT") <= 60_000
    with connect(url + "?ttl=3d", ttl={"research": timedelta(minutes=1)}) as online:  # every view
        online.put_many([row(ts=T + 2 * MINUTE), row(view="other", ts=T + 2 * MINUTE)])
        assert online.expiry_ms("research", "BTC/USDT") > 2 * 86_400_000
    with redis.Redis.from_url(url) as raw:
        head, stored = raw.pttl("fs:{BTC/USDT}:research"), raw.pttl("fs:{BTC/USDT}:research:v1")
        assert abs(head - stored) < 1_000  # the row and its head expire together
    with connect(url) as online:  # no TTL at all: the next write keeps the row for good
        online.put_many([row(ts=T + 3 * MINUTE)])
        assert online.expiry_ms("research", "BTC/USDT") is None


def test_redis_refuses_what_it_cannot_use_with_the_fix(redis_server, tmp_path):
    url = redis_server.fresh()
    with connect(url) as online:
        online.put_many([row()])
    with connect(url, readonly=True) as reader, pytest.raises(FeatureStoreError, match="opened read-only"):
        reader.put_many([row(ts=T + MINUTE)])
    with pytest.raises(FeatureStoreError, match=r"ttl: not a duration: 'soon'"):
        connect(url + "?ttl=research=soon")
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    with pytest.raises(FeatureStoreError, match=rf"cannot reach the online store at redis://127.0.0.1:{closed}/0 "
                                                r".*is redis-server running"):
        connect(f"redis://127.0.0.1:{closed}/0")
    with pytest.raises(FeatureStoreError, match=r"redis://me:\*\*\*@127.0.0.1"):  # the password is never shown
        connect(f"redis://me:secret@127.0.0.1:{closed}/0")
    with connect(url, readonly=True) as reader:
        assert reader.latest("research", "BTC/USDT").features["ret_1"] == 1.0  # nothing changed


def test_redis_writes_again_after_the_server_lost_its_scripts(redis_server):
    url = redis_server.fresh()
    with connect(url) as online:
        online.put_many([row()])
        with redis.Redis.from_url(url) as raw:
            raw.script_flush()
        assert online.put_many([row(ts=T + MINUTE)]) == 1
        assert online.latest("research", "BTC/USDT").ts == T + MINUTE


def test_redis_batches_larger_than_a_script_call(redis_server):
    url = redis_server.fresh()
    rows = [row(symbol=f"S{k:05d}") for k in range(2 * CHUNK + 7)]
    with connect(url) as online:
        assert online.put_many(rows) == len(rows)
        assert online.put_many(rows) == len(rows)  # same ts and version: rewritten, as in SQLite
        assert len(online.get_many("research", [r.symbol for r in rows])) == len(rows)
        assert [r.symbol for r in online.rows("research")] == sorted(r.symbol for r in rows)


VIEWS = """
import polars as pl
from featurestore.definitions import FeatureView
MOM = FeatureView("mom", "1h", {"ret_1": (pl.col("close") / pl.col("close").shift(1)).log()})
"""


def test_the_cli_writes_and_reads_the_redis_store_named_in_featurestore_toml(redis_server, run_cli, tmp_path):
    url, store = redis_server.fresh(2), tmp_path / "store"
    (tmp_path / "views.py").write_text(VIEWS)
    for command in (["init", "--online-store", url, "--timeframe", "1h"],
                    ["ingest", "--symbols", "BTC/USDT,ETH/USDT", "--since", "2024-01-01", "--until", "2024-01-03"],
                    ["backfill", "--view", "mom", "--definitions", tmp_path / "views.py"],
                    ["materialize", "--view", "mom", "--definitions", tmp_path / "views.py"]):
        done = run_cli(*command, "--store", store)
        assert done.returncode == 0, done.stderr
    assert f'online_store = "{url}"' in (store / "featurestore.toml").read_text()
    assert not (store / "online.sqlite").exists()
    shown = run_cli("online", "get", "--view", "mom", "--symbol", "ETH/USDT", "--store", store)
    assert shown.returncode == 0, shown.stderr
    assert "mom ETH/USDT  ts 2024-01-03T00:00:00+00:00" in shown.stdout
    with connect(url, readonly=True) as online:
        assert [row.symbol for row in online.rows("mom")] == ["BTC/USDT", "ETH/USDT"]
        assert 3_500_000 < online.expiry_ms("mom", "BTC/USDT") <= 3_600_000  # the view's TTL: one timeframe
    lacking = run_cli("online", "get", "--view", "mom", "--symbol", "SOL/USDT", "--store", store)
    assert lacking.returncode == 1 and "no online row for view 'mom' and symbol(s) SOL/USDT" in lacking.stderr
