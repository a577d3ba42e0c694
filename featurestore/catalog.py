"""DuckDB views over the store's parquet: ``bars``, and ``features_<view>`` for each backfilled view.

``features_<view>`` reads the view's current version (the last one backfilled; see ``registry``).

The same view definitions serve the persistent ``catalog.duckdb`` (for users who open it with the
``duckdb`` shell) and the in-memory connection behind ``featurestore sql``, so the two cannot drift.

>>> import tempfile
>>> from featurestore.store import Store
>>> view_definitions(Store(tempfile.mkdtemp()))
{}
"""

from __future__ import annotations

import sys

import duckdb

from featurestore.offline import stored_versions, version_dir
from featurestore.registry import current_version
from featurestore.store import Store

__all__ = ["connect", "refresh_catalog", "view_definitions"]


def _quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _parquet_view(glob: str) -> str:
    return f"SELECT * FROM read_parquet({_quote_literal(glob)}, hive_partitioning = false, union_by_name = true)"


def view_definitions(store: Store) -> dict[str, str]:
    """View name -> SELECT over absolute parquet paths, for every dataset present in the store."""
    views: dict[str, str] = {}
    if store.series():
        views["bars"] = _parquet_view(f"{store.bars_root}/**/*.parquet")
    for view_dir in sorted((store.root / "kind=features").glob("view=*")):
        name = view_dir.name.split("=", 1)[1]
        version = current_version(store, name)
        if version is not None and version in stored_versions(store, name):
            views[f"features_{name}"] = _parquet_view(f"{version_dir(store, name, version)}/**/*.parquet")
    return views


def _create_views(con: duckdb.DuckDBPyConnection, store: Store) -> None:
    for name, select in view_definitions(store).items():
        con.execute(f'CREATE OR REPLACE VIEW "{name}" AS {select}')


def connect(store: Store) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the store's views; the store's files are only read."""
    con = duckdb.connect(":memory:")
    _create_views(con, store)
    return con


def refresh_catalog(store: Store) -> bool:
    """Recreate the views in ``<store>/catalog.duckdb``; warn and return False if another process holds it."""
    try:
        with duckdb.connect(str(store.catalog_path)) as con:
            _create_views(con, store)
    except duckdb.IOException as exc:
        print(f"warning: catalog {store.catalog_path} not refreshed ({exc}); the data is stored, "
              "and the next write refreshes it", file=sys.stderr)
        return False
    return True
