"""SQL over the offline store (~10.5M one-minute bars, 20 symbols x 365 days) through ``run_sql`` and the SDK,
against baselines.

Two queries, each through ``featurestore.sql.run_sql`` (the process's sandboxed in-memory DuckDB connection
over the store, kept from call to call, its views brought up to date with the store, the result converted to
polars), compared in the same session with:
- DuckDB on a native table holding the same bars (the limit: no parquet decoding, no per-call setup);
- DuckDB on a persistent connection with the very same views (``view_definitions``, hive partitioning as
  ``featurestore sql`` reads them): the difference to ``run_sql`` is ``run_sql``'s per-call cost;
- for the aggregation, polars ``scan_parquet(...).group_by(...)`` over the same files;
- for the point query (one symbol, one day), DuckDB ``read_parquet`` of the symbol's partition files named
  explicitly (what the storage design recommends for look-ups), the SDK's ``FeatureStore.sql``, which
  keeps its sandboxed connection open between calls (the path a notebook or a service takes), and a
  ``SqlSession`` opened and closed per call (what one ``featurestore sql`` process does, and what
  ``run_sql`` did before it kept its connection: DuckDB opening and closing a database costs about as
  much as the query).

Target (issue 15): the point query within 2x of ``read_parquet`` of the right files, in the same run; the
verdict is noted below the ratio table (ratio = time / baseline time, below 2 is met).

How to run and keep results: see ``benchmarks/conftest.py``.
"""

from __future__ import annotations

from collections.abc import Iterator

import duckdb
import polars as pl
import pytest

from app.sdk import FeatureStore
from featurestore.catalog import create_views, hive_safe, view_definitions
from featurestore.sql import SqlSession, run_sql

AGG_SQL = "SELECT symbol, count(*), avg(close), max(high), min(low), sum(volume) FROM bars GROUP BY symbol"
AGG_ROUNDS = 11
POINT_ROUNDS = 30


def _point_where(data) -> str:
    fmt = "%Y-%m-%d %H:%M:%S+00"
    return (f"symbol = '{data.point_symbol}' AND ts BETWEEN TIMESTAMPTZ '{data.point_start.strftime(fmt)}' "
            f"AND TIMESTAMPTZ '{data.point_end.strftime(fmt)}'")


def _point_sql(data) -> str:
    return f"SELECT * FROM bars WHERE {_point_where(data)}"


def _duckdb(con: duckdb.DuckDBPyConnection, query: str) -> pl.DataFrame:
    """Run on an open connection and convert like ``run_sql`` does (Arrow table -> polars)."""
    return pl.from_arrow(con.sql(query).to_arrow_table())


def _check_aggregate(result: pl.DataFrame, data, count_column: str) -> None:
    assert result.height == len(data.symbols)
    assert result[count_column].sum() == data.bars


def _check_point(result: pl.DataFrame, data) -> None:
    assert result.height == 1441  # a one-day BETWEEN, both ends included
    assert result["symbol"].unique().to_list() == [data.point_symbol]


@pytest.fixture(scope="module")
def duckdb_parquet(sql_data) -> Iterator[duckdb.DuckDBPyConnection]:
    """A persistent in-memory connection with the catalog's own view definitions over the store's parquet."""
    con = duckdb.connect(":memory:")
    root = sql_data.store.root
    create_views(con, view_definitions(sql_data.store), sql_data.store, f"{root}/", hive=hive_safe(root))
    yield con
    con.close()


@pytest.fixture(scope="module")
def feature_store(sql_data) -> Iterator[FeatureStore]:
    with FeatureStore(sql_data.store.root) as fs:
        yield fs


POINT_TIMES: dict[str, tuple[float, float]] = {}  # key -> (fastest, median) of the point-query benchmarks


def _point_record(benchmark, bench_record, key: str, label: str) -> None:
    bench_record(key, label)
    if benchmark.stats is not None:
        POINT_TIMES[key] = (benchmark.stats.stats.min, benchmark.stats.stats.median)


# -- aggregation over every stored bar ------------------------------------------------------------------

def test_run_sql_aggregation(benchmark, bench_record, sql_data):
    result = benchmark.pedantic(run_sql, args=(AGG_SQL, sql_data.store), rounds=AGG_ROUNDS, warmup_rounds=1)
    _check_aggregate(result, sql_data, "count_star()")
    bench_record("run_sql_agg", f"run_sql GROUP BY symbol, {sql_data.bars / 1e6:.1f}M bars")


def test_baseline_duckdb_native_aggregation(benchmark, bench_record, sql_data, duckdb_native):
    result = benchmark.pedantic(_duckdb, args=(duckdb_native, AGG_SQL), rounds=AGG_ROUNDS, warmup_rounds=1)
    _check_aggregate(result, sql_data, "count_star()")
    bench_record("duckdb_native_agg", "DuckDB native table")


def test_baseline_duckdb_parquet_aggregation(benchmark, bench_record, sql_data, duckdb_parquet):
    result = benchmark.pedantic(_duckdb, args=(duckdb_parquet, AGG_SQL), rounds=AGG_ROUNDS, warmup_rounds=1)
    _check_aggregate(result, sql_data, "count_star()")
    bench_record("duckdb_parquet_agg", "DuckDB, same view, open connection")


def test_baseline_polars_aggregation(benchmark, bench_record, sql_data):
    def aggregate() -> pl.DataFrame:
        return (
            pl.scan_parquet(sql_data.glob, hive_partitioning=True)
            .group_by("symbol")
            .agg(pl.len(), pl.col("close").mean(), pl.col("high").max(), pl.col("low").min(), pl.col("volume").sum())
            .collect()
        )

    result = benchmark.pedantic(aggregate, rounds=AGG_ROUNDS, warmup_rounds=1)
    _check_aggregate(result, sql_data, "len")
    bench_record("polars_agg", "polars scan_parquet.group_by")


# -- one symbol, one day ----------------------------------------------------------------------------------

def test_run_sql_point_query(benchmark, bench_record, sql_data):
    result = benchmark.pedantic(run_sql, args=(_point_sql(sql_data), sql_data.store), rounds=POINT_ROUNDS,
                                warmup_rounds=2)
    _check_point(result, sql_data)
    _point_record(benchmark, bench_record, "run_sql_point", "run_sql symbol + 1-day ts range")


def test_baseline_duckdb_native_point_query(benchmark, bench_record, sql_data, duckdb_native):
    result = benchmark.pedantic(_duckdb, args=(duckdb_native, _point_sql(sql_data)), rounds=POINT_ROUNDS,
                                warmup_rounds=2)
    _check_point(result, sql_data)
    _point_record(benchmark, bench_record, "duckdb_native_point", "DuckDB native table")


def test_baseline_duckdb_parquet_point_query(benchmark, bench_record, sql_data, duckdb_parquet):
    result = benchmark.pedantic(_duckdb, args=(duckdb_parquet, _point_sql(sql_data)), rounds=POINT_ROUNDS,
                                warmup_rounds=2)
    _check_point(result, sql_data)
    _point_record(benchmark, bench_record, "duckdb_parquet_point", "DuckDB, same view, open connection")


def test_baseline_duckdb_partition_point_query(benchmark, bench_record, sql_data, duckdb_parquet):
    files = ", ".join(f"'{path}'" for path in sql_data.point_files())
    query = f"SELECT * FROM read_parquet([{files}], hive_partitioning = true) WHERE {_point_where(sql_data)}"
    result = benchmark.pedantic(_duckdb, args=(duckdb_parquet, query), rounds=POINT_ROUNDS, warmup_rounds=2)
    _check_point(result, sql_data)
    _point_record(benchmark, bench_record, "duckdb_partition_point", "DuckDB read_parquet(partition files)")


def test_one_shot_session_point_query(benchmark, bench_record, sql_data):
    def one_shot(query: str) -> pl.DataFrame:
        with SqlSession(sql_data.store) as session:
            return session.sql(query)

    result = benchmark.pedantic(one_shot, args=(_point_sql(sql_data),), rounds=POINT_ROUNDS, warmup_rounds=2)
    _check_point(result, sql_data)
    _point_record(benchmark, bench_record, "session_per_call_point", "SqlSession per call symbol + 1-day ts range")


def test_sdk_point_query(benchmark, bench_record, bench_note, sql_data, feature_store):
    """Last of the point queries: it notes the target's verdict against the baselines measured above."""
    result = benchmark.pedantic(feature_store.sql, args=(_point_sql(sql_data),), rounds=POINT_ROUNDS, warmup_rounds=2)
    _check_point(result, sql_data)
    _point_record(benchmark, bench_record, "sdk_point", "FeatureStore.sql symbol + 1-day ts range (open connection)")
    baseline = POINT_TIMES.get("duckdb_partition_point")
    for key in ("sdk_point", "run_sql_point", "session_per_call_point"):
        if baseline and key in POINT_TIMES:
            fastest, median = (POINT_TIMES[key][i] / baseline[i] for i in (0, 1))
            verdict = "met   " if fastest <= 2 else "MISSED"
            bench_note(f"  {verdict} {key} / read_parquet(partition files): {fastest:.2f}x ({median:.2f}x medians), "
                       "target <= 2x")
