"""The online store: upsert rules (never back in time), exact values, WAL, readers in another process."""

from __future__ import annotations

import math
import sqlite3
import struct
import subprocess
import sys
import textwrap
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest

from featurestore.errors import FeatureStoreError
from featurestore.online import OnlineRow
from featurestore.online.sqlite import SqliteOnlineStore
from featurestore.store import Store

T = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)


def row(symbol: str = "BTC/USDT", ts: datetime = T, version: str = "v1", value: float | None = 1.0,
        view: str = "research") -> OnlineRow:
    return OnlineRow(view, symbol, ts, version, {"ret_1": value, "rv_24": 2.0}, updated_at=ts + MINUTE)


@pytest.fixture
def online(tmp_path):
    with SqliteOnlineStore(Store(tmp_path).online_path) as store:
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


def test_naive_times_are_refused(online):
    with pytest.raises(FeatureStoreError, match="no timezone"):
        online.put_many([row(ts=datetime(2024, 5, 1))])


def test_get_views_reads_a_symbols_rows_of_several_views_in_one_query(online):
    online.put_many([row(view="research"), row(view="daily", ts=T - MINUTE), row(view="research", symbol="ETH/USDT")])
    got = online.get_views(["daily", "research", "absent"], "BTC/USDT")
    assert got == {"daily": online.latest("daily", "BTC/USDT"), "research": online.latest("research", "BTC/USDT")}
    assert got["daily"].ts == T - MINUTE and online.get_views(["research"], "SOL/USDT") == {}


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


# A reader in another process. Between messages it reads freely while the writer writes, and checks what
# holds at any interleaving: the three symbols' rows come from one committed write (one ts, and values that
# match it), and the ts never goes back. Each message "k" from the writer means "write k is committed and I
# wait": the reader must then see exactly k (so reads between writes provably happen) and answers "ok".
READER = textwrap.dedent("""
    import select, sys
    from featurestore.online.sqlite import SqliteOnlineStore
    path, t0_ms = sys.argv[1], int(sys.argv[2])
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

    with SqliteOnlineStore(path, readonly=True) as online:
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


def test_a_reader_in_another_process_sees_only_whole_committed_writes_never_going_back(tmp_path):
    path = Store(tmp_path).online_path
    writes, every = 1_000, 50
    with SqliteOnlineStore(path) as writer:
        writer.put_many(batch(0))  # the file exists before the reader opens it
        reader = subprocess.Popen([sys.executable, "-c", READER, str(path), str(int(T.timestamp() * 1000))],
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
