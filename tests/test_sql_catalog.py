"""The views behind SQL: a moved or copied store reads its own files (``catalog.duckdb`` and ``featurestore
sql``), a query on one symbol opens only that symbol's files, a store below a ``key=value`` directory reads
the same rows, and the long-lived connections (the SDK's, ``run_sql``'s) see what is ingested and backfilled
meanwhile."""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import duckdb
import pytest

from app.sdk import FeatureStore
from conftest import NOW, SINCE, UNTIL, store_with_bars
from featurestore.backfill import backfill
from featurestore.builtin_views import builtin_view
from featurestore.ingest import ingest_synthetic
from featurestore.sql import run_sql
from featurestore.store import Store

COUNTS = "SELECT symbol, count(*) AS n FROM bars GROUP BY symbol ORDER BY symbol"
WEEK = ("--start", "2024-01-01", "--end", "2024-01-08")  # 168 one-hour bars


def ingest(run_cli, root, symbols: str, *time_range: str) -> None:
    result = run_cli("ingest", "--store", root, "--symbols", symbols, "--timeframe", "1h", *time_range)
    assert result.returncode == 0, result.stderr




# ---------------------------------------------------------------------------------------------------------
# A portable catalog


def test_a_copied_store_reads_its_own_files_after_the_original_grows_and_is_deleted(run_cli, tmp_path, monkeypatch):
    original, moved = tmp_path / "store", tmp_path / "moved"
    ingest(run_cli, original, "BTC/USDT,ETH/USDT", *WEEK)
    shutil.copytree(original, moved)  # cp -r store moved
    ingest(run_cli, original, "BTC/USDT,SOL/USDT", "--start", "2024-01-01", "--end", "2024-02-01")
    shutil.rmtree(original)
    expected = [("BTC/USDT", 168), ("ETH/USDT", 168)]

    # DuckDB's Python API on the copy's catalog, first, before any command has run on the copy.
    monkeypatch.chdir(moved)  # the catalog's paths are relative to the store directory
    with duckdb.connect("catalog.duckdb", read_only=True) as con:
        assert con.execute(COUNTS).fetchall() == expected
        first, = con.execute("SELECT min(ts) FROM bars").fetchall()[0]  # a timestamp through fetchall: pytz
    assert first == datetime(2024, 1, 1, tzinfo=UTC)
    monkeypatch.chdir(tmp_path)
    config = {"file_search_path": str(moved)}  # or from anywhere, naming the store
    with duckdb.connect(str(moved / "catalog.duckdb"), read_only=True, config=config) as con:
        assert con.execute(COUNTS).fetchall() == expected

    result = run_cli("sql", COUNTS, "--format", "json", "--store", moved)
    assert result.returncode == 0, result.stderr
    assert [(row["symbol"], row["n"]) for row in json.loads(result.stdout)] == expected
    assert str(original).encode() not in (moved / "catalog.duckdb").read_bytes()


def test_catalog_views_say_where_their_paths_are_relative_to(tmp_path, monkeypatch):
    store = store_with_bars(tmp_path / "store", ["BTC/USDT"])
    backfill(store, builtin_view("research", "1h"), now=NOW)
    monkeypatch.chdir(store.root)
    with duckdb.connect("catalog.duckdb", read_only=True) as con:
        views = con.execute("SELECT view_name, comment, sql FROM duckdb_views() WHERE NOT internal").fetchall()
        assert con.execute("SELECT count(*) FROM features_research_1h").fetchall() == [(168,)]
    assert sorted(name for name, _, _ in views)[:2] == ["bars", "features_research_1h"]
    assert all("open this catalog from there" in comment for _, comment, _ in views)
    assert not any(str(store.root) in sql for _, _, sql in views)


def test_the_catalog_is_rewritten_only_when_the_views_change(tmp_path):
    store = store_with_bars(tmp_path / "store", ["BTC/USDT"])
    before = store.catalog_path.stat().st_ino
    ingest_synthetic(store, ["BTC/USDT"], "1h", since=datetime(2024, 1, 1, tzinfo=UTC), now=NOW)  # more bars
    assert store.catalog_path.stat().st_ino == before
    backfill(store, builtin_view("research", "1h"), now=NOW)  # a new view: a new file, renamed into place
    assert store.catalog_path.stat().st_ino != before
    assert sorted(p.name for p in store.root.iterdir() if p.name.startswith(".catalog")) == []


# ---------------------------------------------------------------------------------------------------------
# Partition pruning


def test_a_query_on_one_symbol_reads_only_that_symbols_files(tmp_path):
    store = store_with_bars(tmp_path / "store", ["BTC/USDT", "ETH/USDT", "SOL/USDT"])
    ingest_synthetic(store, ["BTC/USDT", "ETH/USDT", "SOL/USDT"], "1h", since=datetime(2023, 12, 20, tzinfo=UTC),
                     until=datetime(2024, 1, 1, tzinfo=UTC), now=NOW)  # a 2023 file for each symbol too
    plan = run_sql("EXPLAIN ANALYZE SELECT * FROM bars WHERE symbol = 'ETH/USDT' "
                   "AND ts >= TIMESTAMPTZ '2024-01-05 00:00:00+00' AND ts < TIMESTAMPTZ '2024-01-06 00:00:00+00'",
                   store)["explain_value"].item()
    assert "Scanning Files: 2/6" in plan and "Total Files Read: 2" in plan  # ETH/USDT: two files of six
    assert "symbol=SOL" not in plan and "symbol=BTC" not in plan


def test_a_store_below_a_key_value_directory_reads_the_same_rows(tmp_path):
    plain = store_with_bars(tmp_path / "store", ["BTC/USDT", "ETH/USDT"])
    below = store_with_bars(tmp_path / "symbol=ZZZ" / "year=1999" / "store", ["BTC/USDT", "ETH/USDT"])
    for query in (COUNTS, "DESCRIBE bars", "SELECT * FROM bars WHERE symbol = 'ETH/USDT' ORDER BY ts"):
        assert run_sql(query, below).equals(run_sql(query, plain))
    for store in (plain, below):  # the views have the files' columns, with hive partitioning or without
        backfill(store, builtin_view("research", "1h"), now=NOW)
    assert run_sql("DESCRIBE features_research_1h", below).equals(run_sql("DESCRIBE features_research_1h", plain))


# ---------------------------------------------------------------------------------------------------------
# The SDK's long-lived connection


def test_the_sdk_connection_sees_bars_and_views_added_meanwhile(tmp_path):
    store = store_with_bars(tmp_path / "store", ["BTC/USDT"])
    with FeatureStore(store.root) as fs:
        assert fs.sql(COUNTS).rows() == [("BTC/USDT", 168)]
        store_with_bars(store.root, ["BTC/USDT", "ETH/USDT"], until=datetime(2024, 1, 15, tzinfo=UTC))  # the BTC/USDT file replaced, a new symbol
        assert fs.sql(COUNTS).rows() == [("BTC/USDT", 336), ("ETH/USDT", 336)]
        backfill(store, builtin_view("research", "1h"), now=NOW)
        assert fs.sql("SELECT count(*) FROM features_research_1h").item() == 672
        shutil.rmtree(store.root / "kind=features")
        with pytest.raises(Exception, match="no view features_research_1h"):
            fs.sql("SELECT count(*) FROM features_research_1h")
    assert fs.sql("SELECT count(*) FROM bars").item() == 672  # closed, it reopens on use


def test_the_sdk_connection_serves_threads(tmp_path):
    store = store_with_bars(tmp_path / "store", ["BTC/USDT", "ETH/USDT"])
    with FeatureStore(store.root) as fs, ThreadPoolExecutor(4) as pool:
        counts = list(pool.map(lambda i: fs.sql(f"SELECT count(*) + {i} FROM bars").item(), range(40)))
    assert counts == [336 + i for i in range(40)]


def test_run_sql_on_one_store_then_another_reads_the_files_each_holds_now(tmp_path):
    """``run_sql`` keeps the last store's connection: the store grown, another store, the first one rebuilt with
    other bars in files of the same names (within the same second): every answer is what the files hold now."""
    first, second = store_with_bars(tmp_path / "first", ["BTC/USDT"]), store_with_bars(tmp_path / "second", ["ETH/USDT"])
    assert run_sql(COUNTS, first).rows() == [("BTC/USDT", 168)]
    store_with_bars(first.root, ["BTC/USDT", "ETH/USDT"], until=datetime(2024, 1, 15, tzinfo=UTC))
    assert run_sql(COUNTS, first).rows() == [("BTC/USDT", 336), ("ETH/USDT", 336)]
    assert run_sql(COUNTS, second).rows() == [("ETH/USDT", 168)]
    assert run_sql(COUNTS, second).rows() == [("ETH/USDT", 168)]
    shutil.rmtree(second.root)
    rebuilt = Store(second.root)
    ingest_synthetic(rebuilt, ["ETH/USDT"], "1h", since=SINCE, until=UNTIL, now=NOW, seed=8)

    closes = run_sql("SELECT ts, close FROM bars ORDER BY ts", rebuilt)

    assert closes.rows() == rebuilt.scan_bars("synthetic", "1h").select("ts", "close").collect().rows()
