"""``featurestore sql``: output formats, read-only refusal, clean one-line errors, the Python API.

The sandbox: ``test_sql_sandbox.py``; the views and catalog.duckdb: ``test_sql_catalog.py``."""

from __future__ import annotations

import io
import json

import duckdb
import polars as pl
import pyarrow as pa
import pytest
from polars.testing import assert_frame_equal

from app.cli import main
from conftest import store_with_bars
from featurestore.bars import TS_DTYPE
from featurestore.errors import SqlError
from featurestore.sql import run_sql, run_sql_arrow
from featurestore.store import BarSeries, Store

COUNTS = "SELECT symbol, count(*) AS n FROM bars GROUP BY symbol ORDER BY symbol"
EXPECTED_COUNTS = pl.DataFrame({"symbol": ["BTC/USDT", "ETH/USDT"], "n": [168, 168]})


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    """One week of 1h bars for two symbols (168 each); never modified by these tests."""
    return store_with_bars(tmp_path_factory.mktemp("sql") / "store", ["BTC/USDT", "ETH/USDT"])


@pytest.fixture(scope="module")
def stored(store) -> pl.DataFrame:
    return store.scan_bars("synthetic", "1h").collect()


def sql(run_cli, store: Store, query: str, *options: str):
    return run_cli("sql", query, *options, "--store", store.root)


def utc_ms(frame: pl.DataFrame) -> pl.DataFrame:
    """DuckDB hands timestamps back as microseconds in Etc/UTC; bring them to the store's dtype to compare."""
    return frame.with_columns(pl.col(pl.Datetime).dt.convert_time_zone("UTC").cast(TS_DTYPE))


# ---------------------------------------------------------------------------------------------------------
# Formats


def test_table_output(run_cli, store):
    result = sql(run_cli, store, COUNTS)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.replace(" ", "") in ("│symbol┆n│", "|symbol┆n|") for line in lines)
    rows = [[cell.strip() for cell in line.replace("│", "┆").split("┆")[1:-1]] for line in lines if "/USDT" in line]
    assert rows == [["BTC/USDT", "168"], ["ETH/USDT", "168"]]


def test_csv_to_stdout_round_trips_values(run_cli, store, stored):
    result = sql(run_cli, store, "SELECT symbol, ts, open, close, volume FROM bars ORDER BY symbol, ts", "--format", "csv")
    assert result.returncode == 0, result.stderr
    got = pl.read_csv(io.StringIO(result.stdout), try_parse_dates=True)
    assert got.columns == ["symbol", "ts", "open", "close", "volume"]
    assert got.height == stored.height
    assert got["symbol"].to_list() == stored["symbol"].to_list()
    assert got["ts"].dt.convert_time_zone("UTC").cast(TS_DTYPE).to_list() == stored["ts"].to_list()
    for column in ("open", "close", "volume"):  # floats are printed so that they read back bit for bit
        assert got[column].to_list() == stored[column].to_list()


def test_json_to_stdout(run_cli, store):
    result = sql(run_cli, store, COUNTS, "--format", "json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == EXPECTED_COUNTS.to_dicts()


def test_parquet_to_a_file_reads_back_with_duckdb(run_cli, store, tmp_path):
    out = tmp_path / "f.parquet"
    query = "SELECT * FROM bars ORDER BY symbol, ts"
    result = sql(run_cli, store, query, "--format", "parquet", "--output", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert f"wrote 336 rows to {out}" in result.stderr
    back = duckdb.sql(f"SELECT * FROM read_parquet('{out}')").pl()
    assert_frame_equal(back, run_sql(query, store), check_exact=True)
    assert [p.name for p in tmp_path.iterdir()] == ["f.parquet"]  # written atomically: no temporary file left


def test_parquet_without_output_is_a_clear_error(run_cli, store):
    result = sql(run_cli, store, COUNTS, "--format", "parquet")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.strip() == "error: --format parquet needs --output FILE (parquet is binary)"


# ---------------------------------------------------------------------------------------------------------
# Read-only


REFUSED = {
    "CREATE TABLE": ("CREATE TABLE t AS SELECT * FROM bars", "CREATE"),
    "DROP VIEW": ("DROP VIEW bars", "DROP"),
    "INSERT": ("INSERT INTO bars SELECT * FROM bars", "INSERT"),
    "COPY TO": ("COPY (SELECT * FROM bars) TO '{out}/copy.csv'", "COPY"),
    "ATTACH": ("ATTACH '{out}/other.duckdb' AS other", "ATTACH"),
    "SET": ("SET lock_configuration = false", "SET"),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_writing_statements_are_refused(run_cli, store, tmp_path, hash_tree, name):
    query, kind = REFUSED[name]
    before = hash_tree(store.root)
    result = sql(run_cli, store, query.format(out=tmp_path))
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("error: refused: the offline store is read-only through SQL")
    assert f"this is a {kind} statement" in result.stderr
    assert list(tmp_path.iterdir()) == []  # COPY wrote nothing, ATTACH created no database
    assert hash_tree(store.root) == before


def test_multiple_statements_are_refused(run_cli, store, tmp_path):
    result = sql(run_cli, store, f"SELECT 1; COPY (SELECT * FROM bars) TO '{tmp_path}/copy.csv'")
    assert result.returncode == 1
    assert result.stdout == ""
    assert "refused: exactly one read-only SQL statement at a time, got 2" in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("query", [
    "WITH b AS (SELECT * FROM bars) SELECT count(*) FROM b",
    "FROM bars LIMIT 3",
    "DESCRIBE bars",
    "SHOW TABLES",
    "SUMMARIZE bars",
    "EXPLAIN SELECT * FROM bars",
])
def test_read_statements_are_allowed(store, query):
    assert run_sql(query, store).height >= 1


@pytest.mark.parametrize("explain", [
    "EXPLAIN ANALYZE COPY (SELECT * FROM bars) TO '{target}'",
    "/* c */ EXPLAIN ANALYZE COPY (SELECT * FROM bars) TO '{target}'",
    "EXPLAIN /* c */ ANALYZE -- c\n COPY (SELECT * FROM bars) TO '{target}'",
    "EXPLAIN ANALYZE /* /* */ SELECT 1 */ COPY (SELECT * FROM bars) TO '{target}'",
    "EXPLAIN (FORMAT json) ANALYZE COPY (SELECT * FROM bars) TO '{target}'",
    "EXPLAIN EXPLAIN ANALYZE COPY (SELECT * FROM bars) TO '{target}'",
])
def test_explain_analyze_cannot_smuggle_a_copy(store, tmp_path, explain):
    target = tmp_path / "smuggled.csv"
    with pytest.raises(SqlError, match=r"refused|SQL error"):
        run_sql(explain.format(target=target), store)
    assert not target.exists()


@pytest.mark.parametrize("query", ["/* c */ EXPLAIN SELECT 1", "-- c\nexplain analyze SELECT max(close) FROM bars",
                                   "EXPLAIN (FORMAT json) SELECT * FROM bars"])
def test_explain_after_a_comment_shows_the_plan(run_cli, store, query):
    result = sql(run_cli, store, query)
    assert result.returncode == 0, result.stderr
    assert "Scan" in result.stdout or "PROJECTION" in result.stdout.upper()


# ---------------------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize(("query", "detail"), [
    ("SELEC * FROM bars", "Parser Error"),
    ("SELECT * FROM no_such_table", "no table or view no_such_table in the store"),
    ("SELECT no_such_column FROM bars", "no_such_column"),
])
def test_sql_errors_are_reported_without_a_traceback(run_cli, store, query, detail):
    result = sql(run_cli, store, query)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("error: SQL error: ")
    assert detail in result.stderr
    assert len(result.stderr.splitlines()) == 1


def one_line_error(result, *details: str) -> None:
    assert result.returncode == 1
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith("error: ")
    for detail in details:
        assert detail in result.stderr


@pytest.mark.parametrize("fmt", ["table", "csv", "json"])
@pytest.mark.parametrize("value", ["'infinity'::TIMESTAMP", "'-infinity'::TIMESTAMPTZ", "'infinity'::DATE",
                                   "['infinity'::TIMESTAMP]"])
def test_dates_polars_cannot_write_are_named(run_cli, store, fmt, value):
    result = sql(run_cli, store, f"SELECT 1 AS n, {value} AS t", "--format", fmt)
    one_line_error(result, "column 't'", f"as {fmt}", "outside the range", '"t"::VARCHAR')


@pytest.mark.parametrize("value", ["'ab'::BLOB", "{'a': 'x'::BLOB}"])
def test_a_blob_column_as_json_is_named(run_cli, store, value):
    one_line_error(sql(run_cli, store, f"SELECT 1 AS n, {value} AS b", "--format", "json"),
                   "column 'b'", "JSON has no binary type")


def test_a_missing_store_says_how_to_ingest(run_cli, tmp_path):
    missing = tmp_path / "nowhere"
    result = run_cli("sql", "SELECT * FROM bars", "--store", missing)
    one_line_error(result, f"the store {missing} (the directory does not exist) has no bars",
                   f"featurestore ingest --store {missing}")
    assert "pg_" not in result.stderr
    assert not missing.exists()


def test_a_damaged_file_is_named_and_statements_without_its_view_still_run(run_cli, tmp_path):
    store = store_with_bars(tmp_path / "store", ["BTC/USDT", "ETH/USDT"])
    damaged = store.bar_files(BarSeries("synthetic", "1h", "ETH/USDT"))[0]
    damaged.write_bytes(damaged.read_bytes()[:100])
    one_line_error(sql(run_cli, store, "SELECT count(*) FROM bars"), f"damaged file {damaged}")
    result = sql(run_cli, store, "SELECT 42 AS answer", "--format", "csv")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "answer\n42\n"


def test_a_store_without_the_view_asked_for_says_which_it_has(run_cli, store):
    one_line_error(sql(run_cli, store, "SELECT * FROM features_research"),
                   "no view features_research", "featurestore backfill --view research", "(views: bars)")
    one_line_error(sql(run_cli, store, "SELECT * FROM bar"), "did you mean bars?")


@pytest.mark.parametrize(("query", "fmt"), [
    ("SELECT INTERVAL 1 DAY AS i", "table"),
    ("SELECT [1, 2] AS l", "csv"),
])
def test_unsupported_result_types_are_clean_errors(store, capsys, query, fmt):
    assert main(["sql", query, "--format", fmt, "--store", str(store.root)]) == 1
    assert capsys.readouterr().err.startswith("error: ")


# ---------------------------------------------------------------------------------------------------------
# Python API


def test_python_api_returns_polars_and_arrow(store, stored):
    query = "SELECT * FROM bars ORDER BY symbol, ts"
    frame = run_sql(query, store)
    table = run_sql_arrow(query, store)
    assert isinstance(frame, pl.DataFrame)
    assert isinstance(table, pa.Table)
    assert table.num_rows == frame.height == stored.height
    assert_frame_equal(pl.from_arrow(table), frame)
    assert_frame_equal(utc_ms(frame), stored, check_exact=True)
    assert_frame_equal(run_sql(COUNTS, store), EXPECTED_COUNTS, check_dtypes=False)

