"""DuckDB views over the store's parquet: ``bars``, and ``features_<view>`` for each backfilled view.

``features_<view>`` reads the view's current version, or while that is not backfilled yet the version
backfilled last (``registry.sql_version``); ``features_<view>__<version>`` reads any stored version.

The same view definitions serve the persistent ``catalog.duckdb`` (for users who open it with the
``duckdb`` shell) and the in-memory connection behind ``featurestore sql``, so the two cannot drift.

>>> import tempfile
>>> from featurestore.store import Store
>>> view_definitions(Store(tempfile.mkdtemp()))
{}
"""

from __future__ import annotations

import hashlib
import json
import sys

import duckdb

from featurestore.registry import sql_version
from featurestore.store import Store

__all__ = ["connect", "refresh_catalog", "view_definitions"]

_META_TABLE = "featurestore_catalog"


def _quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _parquet_view(glob: str) -> str:
    return f"SELECT * FROM read_parquet({_quote_literal(glob)}, hive_partitioning = false, union_by_name = true)"


def view_definitions(store: Store) -> dict[str, str]:
    """View name -> SELECT over absolute parquet paths, for every dataset present in the store."""
    views: dict[str, str] = {}
    if store.series():
        views["bars"] = _parquet_view(f"{store.bars_root}/**/*.parquet")
    for name in store.feature_views():
        shown = sql_version(store, name)
        for version in store.stored_versions(name):
            select = _parquet_view(f"{store.version_dir(name, version)}/**/*.parquet")
            views[f"features_{name}__{version}"] = select
            if version == shown:
                views[f"features_{name}"] = select
    return views


def _create_views(con: duckdb.DuckDBPyConnection, store: Store) -> None:
    for name, select in view_definitions(store).items():
        con.execute(f'CREATE OR REPLACE VIEW "{name}" AS {select}')


def connect(store: Store) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the store's views; the store's files are only read."""
    con = duckdb.connect(":memory:")
    _create_views(con, store)
    return con


def _definitions_hash(views: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(views, sort_keys=True).encode()).hexdigest()


def _catalog_hash(store: Store) -> str | None:
    """The definitions hash recorded in the catalog file, read without modifying it (None if absent)."""
    if not store.catalog_path.exists():
        return None
    try:
        with duckdb.connect(str(store.catalog_path), read_only=True) as con:
            row = con.execute(f"SELECT definitions_hash FROM {_META_TABLE}").fetchone()
    except duckdb.Error:
        return None
    return row[0] if row else None


def refresh_catalog(store: Store) -> bool:
    """Make ``<store>/catalog.duckdb``'s views match the store; leave the file untouched when they do.

    Returns False (with a warning) if another process holds the catalog open for writing.
    """
    views = view_definitions(store)
    wanted = _definitions_hash(views)
    if _catalog_hash(store) == wanted:
        return True
    try:
        with duckdb.connect(str(store.catalog_path)) as con:
            _create_views(con, store)
            con.execute(f"CREATE OR REPLACE TABLE {_META_TABLE} AS SELECT ? AS definitions_hash", [wanted])
    except duckdb.IOException as exc:
        print(f"warning: catalog {store.catalog_path} not refreshed ({exc}); the data is stored, "
              "and the next ingest or backfill (even one with nothing new) refreshes it", file=sys.stderr)
        return False
    return True
