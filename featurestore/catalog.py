"""DuckDB views over the store's parquet: ``bars``, and ``features_<view>`` for each backfilled view.

``features_<view>`` reads the view's current version, or while that is not backfilled yet the version
backfilled last (``registry.sql_version``); ``features_<view>__<version>`` reads any stored version.

One set of definitions, with paths relative to the store directory, serves two places:

- ``catalog.duckdb``, for users who open it with DuckDB themselves. Its paths stay relative, so the file
  holds no trace of where the store lives: a moved or copied store reads its own files, never the
  original's. DuckDB resolves relative paths against the working directory (or ``file_search_path``),
  so open it from the store directory::

      cd store && python -c "import duckdb; print(duckdb.connect('catalog.duckdb', read_only=True).sql('FROM bars'))"

- the connection behind ``featurestore sql`` (``featurestore.sql``), which prefixes the store's absolute
  path and reads with ``hive_partitioning``: a filter on a partition key (``symbol``, ``exchange``,
  ``timeframe``) then opens only that partition's files, and the per-file statistics skip the row groups
  outside a ``ts`` range. DuckDB takes every ``key=value`` directory of a path for a partition, the
  store's parent directories included, so a store below such a directory is read without hive
  partitioning (the same rows, found through the statistics alone).

>>> import tempfile
>>> from featurestore.store import Store
>>> view_definitions(Store(tempfile.mkdtemp()))
{}
>>> print(ParquetView("kind=bars/**/*.parquet", ("kind", "year")).select("/data/store/", hive=True))
SELECT * EXCLUDE (kind, year) FROM read_parquet('/data/store/kind=bars/**/*.parquet', hive_partitioning = true, union_by_name = true)
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import duckdb

from featurestore.atomic import write_bytes_atomic
from featurestore.registry import sql_version
from featurestore.store import Store

__all__ = ["ParquetView", "create_views", "hive_safe", "refresh_catalog", "view_definitions"]

_META_TABLE = "featurestore_catalog"
_COMMENT = ("paths relative to the store directory: open this catalog from there (cd <store>), "
            "or SET file_search_path = '<store>'")


def _quote_literal(text: str) -> str:
    """``text`` as a SQL string literal.

    >>> print(_quote_literal("it's"))
    'it''s'
    """
    return "'" + text.replace("'", "''") + "'"


@dataclass(frozen=True)
class ParquetView:
    """A view over the parquet files matching ``pattern`` (relative to the store directory).

    ``path_keys`` are the partition keys of the paths that are not columns of the files: read with hive
    partitioning they would become columns, so they are left out and the view has the files' columns
    either way.
    """

    pattern: str
    path_keys: tuple[str, ...]

    def select(self, root: str = "", *, hive: bool = False) -> str:
        """The view's SELECT, its paths prefixed with ``root`` (a directory ending in ``/``, or nothing)."""
        columns = f"* EXCLUDE ({', '.join(self.path_keys)})" if hive else "*"
        return (f"SELECT {columns} FROM read_parquet({_quote_literal(root + self.pattern)}, "
                f"hive_partitioning = {str(hive).lower()}, union_by_name = true)")


def _relative(store: Store, directory: Path) -> str:
    return f"{directory.relative_to(store.root).as_posix()}/**/*.parquet"


def view_definitions(store: Store) -> dict[str, ParquetView]:
    """View name -> its parquet files, for every dataset present in the store."""
    views: dict[str, ParquetView] = {}
    if any(store.bars_root.rglob("*.parquet")):
        views["bars"] = ParquetView(_relative(store, store.bars_root), ("kind", "year"))
    for name in store.feature_views():
        shown = sql_version(store, name)
        for version in store.stored_versions(name):
            view = ParquetView(_relative(store, store.version_dir(name, version)),
                               ("kind", "view", "version", "exchange", "year"))
            views[f"features_{name}__{version}"] = view
            if version == shown:
                views[f"features_{name}"] = view
    return views


def hive_safe(root: Path) -> bool:
    """Whether DuckDB's hive partitioning sees only the store's own keys below ``root`` (no parent
    directory is named ``key=value``).

    >>> hive_safe(Path("/data/store")), hive_safe(Path("/data/symbol=X/store"))
    (True, False)
    """
    return not any("=" in part for part in root.parts)


def create_views(con: duckdb.DuckDBPyConnection, views: dict[str, ParquetView], root: str = "", *,
                 hive: bool = False) -> None:
    """Create (or replace) ``views`` on ``con``, their paths prefixed with ``root``."""
    for name, view in views.items():
        con.execute(f'CREATE OR REPLACE VIEW "{name}" AS {view.select(root, hive=hive)}')


def _definitions_hash(views: dict[str, ParquetView]) -> str:
    text = json.dumps({name: view.select() for name, view in views.items()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


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


def _catalog_bytes(store: Store, views: dict[str, ParquetView], definitions_hash: str) -> bytes:
    """A catalog database holding ``views``, built aside (its relative paths bound against the store)."""
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "catalog.duckdb"
        with duckdb.connect(str(path), config={"file_search_path": str(store.root)}) as con:
            for name, view in views.items():
                con.execute(f'CREATE VIEW "{name}" AS {view.select()}')
                con.execute(f'COMMENT ON VIEW "{name}" IS {_quote_literal(_COMMENT)}')
            con.execute(f"CREATE TABLE {_META_TABLE} AS SELECT ? AS definitions_hash", [definitions_hash])
        return path.read_bytes()


def refresh_catalog(store: Store) -> bool:
    """Make ``<store>/catalog.duckdb``'s views match the store; leave the file untouched when they do.

    The file is built aside and renamed into place, so a reader holding the old one open keeps reading it.
    Returns whether the file was rewritten.
    """
    views = view_definitions(store)
    wanted = _definitions_hash(views)
    if _catalog_hash(store) == wanted:
        return False
    write_bytes_atomic(_catalog_bytes(store, views, wanted), store.catalog_path)
    return True
