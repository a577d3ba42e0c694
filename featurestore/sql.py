"""Read-only SQL over the offline store, through DuckDB.

>>> import tempfile
>>> from featurestore.store import Store
>>> run_sql("SELECT 42 AS answer", Store(tempfile.mkdtemp()))["answer"].to_list()
[42]
>>> run_sql("CREATE TABLE t (x INT)", Store(tempfile.mkdtemp()))
Traceback (most recent call last):
...
featurestore.errors.SqlError: refused: the offline store is read-only through SQL, and this is a CREATE statement; only SELECT (incl. WITH, DESCRIBE, SHOW) and EXPLAIN are allowed
"""

from __future__ import annotations

import re

import duckdb
import polars as pl
import pyarrow as pa

from featurestore.catalog import create_views, hive_safe, view_definitions
from featurestore.errors import SqlError
from featurestore.store import Store

__all__ = ["run_sql", "run_sql_arrow"]

_EXPLAIN_PREFIX = re.compile(r"^\s*EXPLAIN\s+(ANALYZE\s+|ANALYSE\s+)?(\([^)]*\)\s*)?", re.IGNORECASE)


def _checked_statement(query: str) -> str:
    try:
        statements = duckdb.extract_statements(query)
    except duckdb.Error as exc:
        raise SqlError(f"SQL error: {exc}") from None
    if len(statements) != 1:
        raise SqlError(f"refused: exactly one read-only SQL statement at a time, got {len(statements)}")
    kind = statements[0].type
    if kind == duckdb.StatementType.EXPLAIN:
        # EXPLAIN ANALYZE runs the statement it explains: that one must be read-only too
        _checked_statement(_EXPLAIN_PREFIX.sub("", query, count=1))
        return query
    if kind != duckdb.StatementType.SELECT:
        raise SqlError(
            f"refused: the offline store is read-only through SQL, and this is a {kind.name} statement; "
            "only SELECT (incl. WITH, DESCRIBE, SHOW) and EXPLAIN are allowed"
        )
    return query


def _connect(store: Store) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the store's views; the store's files are only read."""
    con = duckdb.connect(":memory:")
    create_views(con, view_definitions(store), f"{store.root}/", hive=hive_safe(store.root))
    return con


def run_sql_arrow(query: str, store: Store) -> pa.Table:
    """Run one read-only statement over the store's views and return an Arrow table."""
    checked = _checked_statement(query)
    con = _connect(store)
    try:
        # No statement of the user's may change settings from here on (e.g. to re-enable writes).
        con.execute("SET lock_configuration = true")
        return con.sql(checked).to_arrow_table()
    except duckdb.Error as exc:
        raise SqlError(f"SQL error: {exc}") from None
    finally:
        con.close()


def run_sql(query: str, store: Store) -> pl.DataFrame:
    """Run one read-only statement over the store's views and return a polars DataFrame."""
    table = run_sql_arrow(query, store)
    try:
        return pl.from_arrow(table)
    except (pl.exceptions.PolarsError, pa.ArrowException) as exc:
        raise SqlError(f"the result has a column type polars cannot hold ({table.schema}): {exc}") from None
