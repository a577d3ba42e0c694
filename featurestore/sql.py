"""Read-only SQL over the offline store, through DuckDB, reading nothing but the store.

A ``SqlSession`` is one DuckDB connection over one store, kept open between statements so that DuckDB's
caches of parquet footers and file blocks serve the next one (the SDK's ``FeatureStore.sql`` keeps one).
``run_sql`` runs on the session of the store it was last called for, kept by the process (opening a DuckDB
database and closing it again costs more than a one-symbol, one-day query); a call for another store, or
in a forked child, opens a new one and lets the old one go. Each statement is checked first
(``featurestore.sql_statement``); before it runs, the views are brought up to date with the store
(``featurestore.catalog``), so bars ingested or views backfilled meanwhile are seen.

The connection is sandboxed before it sees a statement: file access only below the store directory
(DuckDB's ``allowed_directories`` with ``enable_external_access`` off: no other file, no network, no
``/proc``, hence no environment variable such as the signing key), no extension installed or loaded, no
Python variable scanned, no temporary directory (nothing spills outside the store), and the
configuration locked so that no statement can undo any of it.

>>> import tempfile
>>> from featurestore.store import Store
>>> run_sql("SELECT 42 AS answer", Store(tempfile.mkdtemp()))["answer"].to_list()
[42]
>>> run_sql("CREATE TABLE t (x INT)", Store(tempfile.mkdtemp()))
Traceback (most recent call last):
...
featurestore.errors.SqlError: refused: the offline store is read-only through SQL, and this is a CREATE statement; only SELECT (incl. WITH, DESCRIBE, SHOW) and EXPLAIN of a SELECT are allowed
>>> run_sql("SELECT * FROM read_text('/etc/passwd')", Store("/data/store"))
Traceback (most recent call last):
...
featurestore.errors.SqlError: refused: featurestore sql reads only the files of the store /data/store; it cannot open "/etc/passwd"
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from types import TracebackType

import duckdb
import polars as pl
import pyarrow as pa

from featurestore.catalog import ParquetView, create_view, hive_safe, view_definitions
from featurestore.errors import SqlError
from featurestore.sql_errors import first_failing, one_line, sql_error
from featurestore.sql_statement import checked_statement
from featurestore.store import Store

__all__ = ["SqlSession", "run_sql", "run_sql_arrow"]

_SANDBOX = {
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "allow_community_extensions": False,
    "python_enable_replacements": False,
    "temp_directory": "",
}
_UNCONVERTIBLE = (pl.exceptions.PolarsError, pa.ArrowException, pl.exceptions.PanicException)


def _sandboxed(root: Path) -> duckdb.DuckDBPyConnection:
    """An in-memory connection that can open files below ``root`` only (its configuration not locked yet)."""
    con = duckdb.connect(":memory:", config=_SANDBOX)
    con.execute("SET allowed_directories = ?", [[f"{root}/"]])
    con.execute("SET enable_external_access = false")
    con.execute("SET parquet_metadata_cache = true")  # footers read once per connection (checked for changes)
    return con


class SqlSession:
    """One sandboxed DuckDB connection over ``store``, for many statements (thread-safe; close it, or use
    it in a ``with``)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._root = store.root.resolve()
        self._prefix, self._hive = f"{self._root}/", hive_safe(self._root)
        self._views: dict[str, ParquetView] = {}
        self._unreadable: dict[str, str] = {}  # view -> why DuckDB could not create it
        self._guarded: set[str] = set()  # views that leave damaged files out (catalog.create_view)
        self._lock = threading.Lock()
        self._con = _sandboxed(self._root)
        self._con.execute("SET lock_configuration = true")

    def __enter__(self) -> SqlSession:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            self._con.close()

    def _sync_views(self) -> None:
        """Create, replace and drop views so that they match the store now. A view DuckDB cannot create (a
        damaged file it cannot tell apart) is left out, with the reason, so that statements not naming it still run;
        one with damaged files it can name raises an error naming them when a statement touches them."""
        wanted = view_definitions(self.store)
        for name in self._views.keys() - wanted.keys():
            self._con.execute(f'DROP VIEW "{name}"')
        self._unreadable, guarded = {}, set()
        for name, view in wanted.items():
            if self._views.get(name) != view or name in self._guarded:
                try:
                    if create_view(self._con, name, view, self.store, self._prefix, hive=self._hive):
                        guarded.add(name)  # its files listed, not globbed: listed again before the next statement
                except duckdb.Error as exc:
                    self._con.execute(f'DROP VIEW IF EXISTS "{name}"')
                    self._unreadable[name] = str(exc).splitlines()[0]
        self._views = {name: view for name, view in wanted.items() if name not in self._unreadable}
        self._guarded = guarded

    def arrow(self, query: str) -> pa.Table:
        """Run one read-only statement over the store's views; the result as an Arrow table."""
        statement = checked_statement(query)
        with self._lock:
            try:
                self._sync_views()
                return self._con.sql(statement).to_arrow_table()
            except duckdb.Error as exc:
                raise sql_error(exc, sorted(self._views), self._unreadable, self.store.root) from None

    def sql(self, query: str) -> pl.DataFrame:
        """Run one read-only statement over the store's views; the result as a polars DataFrame."""
        return _polars(self.arrow(query))


def _polars(table: pa.Table) -> pl.DataFrame:
    """``table`` as a polars DataFrame; an error naming the first column polars cannot hold."""
    names = table.column_names
    repeated = next((name for name in names if names.count(name) > 1), None)
    if repeated is not None:
        raise SqlError(f"the result has {names.count(repeated)} columns named {repeated!r}; name them apart with AS, "
                       f"e.g. SELECT a.ts AS a_ts, b.ts AS b_ts")
    try:
        return pl.from_arrow(table)
    except _UNCONVERTIBLE as error:
        found = first_failing(table.column_names, lambda name: pl.from_arrow(table.select([name])), _UNCONVERTIBLE)
        if found is None:
            raise SqlError(f"polars cannot hold this result: {one_line(str(error))}") from None
        name, column_error = found
        raise SqlError(f"column {name!r} has a type polars cannot hold ({table.schema.field(name).type}): "
                       f'{one_line(str(column_error))}; cast it in SQL, e.g. "{name}"::VARCHAR') from None


_SHARED: dict[tuple[int, Path], SqlSession] = {}  # (process id, store root) -> the session run_sql uses
_SHARED_LOCK = threading.Lock()


def _shared_session(store: Store) -> SqlSession:
    """The process's session over ``store``: the one of the last call if that was for the same store (and
    this process: a forked child never uses its parent's DuckDB), else a new one. The one it replaces is
    not closed here: a thread still running a statement on it holds it, and it closes when dropped."""
    key = (os.getpid(), store.root.resolve())
    with _SHARED_LOCK:
        if key not in _SHARED:
            _SHARED.clear()
            _SHARED[key] = SqlSession(store)
        return _SHARED[key]


def run_sql_arrow(query: str, store: Store) -> pa.Table:
    """Run one read-only statement over the store's views (``_shared_session``); an Arrow table."""
    return _shared_session(store).arrow(query)


def run_sql(query: str, store: Store) -> pl.DataFrame:
    """Run one read-only statement over the store's views (``_shared_session``); a polars DataFrame."""
    return _shared_session(store).sql(query)
