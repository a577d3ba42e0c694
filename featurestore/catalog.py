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
  partitioning (the same rows, the keys taken from the file names, found through the statistics alone).
  The catalog's views read that way too, since where it will be opened from is not known.

>>> import tempfile
>>> from featurestore.store import Store
>>> view_definitions(Store(tempfile.mkdtemp()))
{}
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import duckdb

from featurestore.atomic import write_bytes_atomic
from featurestore.damaged import REPAIR, damaged_files
from featurestore.registry import sql_version
from featurestore.store import Store

__all__ = ["ParquetView", "create_view", "create_views", "hive_safe", "refresh_catalog", "view_definitions"]

_META_TABLE = "featurestore_catalog"
BAR_KEYS = ("kind", "exchange", "timeframe", "symbol", "year")
FEATURE_KEYS = ("kind", "view", "version", "exchange", "symbol", "year")
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

    ``keys`` are the partition keys of the files' paths below the store directory, in order; the files do
    not hold them as columns. The view shows the ``shown`` ones first, then the files' columns: with hive
    partitioning read from the paths by DuckDB (so a filter on them prunes files), without it extracted
    from each file's name, anchored at the end of the path so no parent directory can be taken for a key.
    """

    pattern: str
    keys: tuple[str, ...]
    shown: tuple[str, ...]

    def _key_from_filename(self, wanted: str) -> str:
        """``wanted``'s value, decoded, from the ``filename`` column."""
        segments = "/".join(f"{key}=([^/]*)" if key == wanted else f"{key}=[^/]*" for key in self.keys)
        return f"url_decode(regexp_extract(filename, {_quote_literal(segments + '/[^/]*$')}, 1)) AS \"{wanted}\""

    def select(self, root: str = "", *, hive: bool = False, files: Sequence[str] | None = None) -> str:
        """The view's SELECT, its paths prefixed with ``root`` (a directory ending in ``/``, or nothing);
        ``files`` (relative to the store) instead of ``pattern`` when given.

        >>> view = ParquetView("kind=features/view=v/**/*.parquet", ("kind", "view", "symbol"), ("symbol",))
        >>> print(view.select("/data/store/", hive=True))
        SELECT "symbol", * EXCLUDE ("kind", "view", "symbol") FROM read_parquet('/data/store/kind=features/view=v/**/*.parquet', hive_partitioning = true, union_by_name = true)
        >>> print(view.select())
        SELECT url_decode(regexp_extract(filename, 'kind=[^/]*/view=[^/]*/symbol=([^/]*)/[^/]*$', 1)) AS "symbol", COLUMNS(lambda c: c NOT IN ('filename', 'symbol')) FROM read_parquet('kind=features/view=v/**/*.parquet', hive_partitioning = false, union_by_name = true, filename = true)
        """
        paths = (f"[{', '.join(_quote_literal(root + f) for f in files)}]" if files is not None
                 else _quote_literal(root + self.pattern))
        shown = [f'"{key}"' for key in self.shown]
        if hive:
            columns = f"{', '.join(shown)}, * EXCLUDE ({', '.join(f'{chr(34)}{key}{chr(34)}' for key in self.keys)})"
            return f"SELECT {columns} FROM read_parquet({paths}, hive_partitioning = true, union_by_name = true)"
        hidden = ", ".join(_quote_literal(name) for name in ("filename", *self.shown))
        columns = ", ".join([*(self._key_from_filename(key) for key in self.shown), f"COLUMNS(lambda c: c NOT IN ({hidden}))"])
        return (f"SELECT {columns} FROM read_parquet({paths}, hive_partitioning = false, union_by_name = true, "
                "filename = true)")

    def guarded_select(self, store: Store, damaged: Mapping[Path, str], root: str = "", *,
                       hive: bool = False) -> str:
        """The view's SELECT over its readable files, plus for each ``damaged`` file a row of its partition
        keys that raises an error naming the file: a statement that touches that partition fails with the
        error, one whose filters rule the partition out (``WHERE symbol = 'ETH/USDT'``) runs.

        >>> view = ParquetView("kind=bars/**/*.parquet", BAR_KEYS, BAR_KEYS[1:-1])
        >>> damaged = Path("/s/kind=bars/exchange=x/timeframe=1m/symbol=A%2FB/year=2024/bars.parquet")
        >>> print(view.guarded_select(Store("/s"), {damaged: "cut short"}))  # no readable file: only the guard
        SELECT * FROM (VALUES ('x', '1m', 'A/B')) AS damaged("exchange", "timeframe", "symbol") WHERE error('damaged file kind=bars/exchange=x/timeframe=1m/symbol=A%2FB/year=2024/bars.parquet: cut short; move it ...')
        """
        relative = {path: path.relative_to(store.root) for path in damaged}
        readable = sorted(p.relative_to(store.root).as_posix() for p in store.root.glob(self.pattern)
                          if p not in damaged)
        parts = [self.select(root, hive=hive, files=readable)] if readable else []
        for path, why in damaged.items():
            keys = {key: unquote(value) for key, sep, value in (part.partition("=") for part in relative[path].parts)
                    if sep and key in self.shown}
            message = f"damaged file {root}{relative[path].as_posix()}: {why}; {REPAIR}"
            parts.append(f"SELECT * FROM (VALUES ({', '.join(map(_quote_literal, keys.values()))})) AS "
                         f"damaged({', '.join(f'{chr(34)}{key}{chr(34)}' for key in keys)}) "
                         f"WHERE error({_quote_literal(message)})")
        return " UNION ALL BY NAME ".join(parts)


def _relative(store: Store, directory: Path) -> str:
    return f"{directory.relative_to(store.root).as_posix()}/**/*.parquet"


def view_definitions(store: Store) -> dict[str, ParquetView]:
    """View name -> its parquet files, for every dataset present in the store."""
    views: dict[str, ParquetView] = {}
    if any(store.bars_root.rglob("*.parquet")):
        views["bars"] = ParquetView(_relative(store, store.bars_root), BAR_KEYS, ("exchange", "timeframe", "symbol"))
    for name in store.feature_views():
        shown = sql_version(store, name)
        for version in store.stored_versions(name):
            view = ParquetView(_relative(store, store.version_dir(name, version)), FEATURE_KEYS, ("symbol",))
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


def create_view(con: duckdb.DuckDBPyConnection, name: str, view: ParquetView, store: Store, root: str = "", *,
                hive: bool = False) -> list[Path]:
    """Create (or replace) the view ``name`` on ``con``, its paths prefixed with ``root``; return the damaged
    files it had to leave out (``ParquetView.guarded_select``), [] in the usual case."""
    try:
        con.execute(f'CREATE OR REPLACE VIEW "{name}" AS {view.select(root, hive=hive)}')
        return []
    except duckdb.Error:
        damaged = damaged_files(sorted(store.root.glob(view.pattern)))
        if not damaged:
            raise
    con.execute(f'CREATE OR REPLACE VIEW "{name}" AS {view.guarded_select(store, damaged, root, hive=hive)}')
    return sorted(damaged)


def create_views(con: duckdb.DuckDBPyConnection, views: dict[str, ParquetView], store: Store, root: str = "", *,
                 hive: bool = False) -> None:
    """Create (or replace) ``views`` on ``con`` (``create_view``)."""
    for name, view in views.items():
        create_view(con, name, view, store, root, hive=hive)


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


def _catalog_bytes(store: Store, views: dict[str, ParquetView]) -> bytes:
    """A catalog database holding ``views``, built aside (its relative paths bound against the store).

    A view with damaged files leaves them out (``create_view``), with a warning; the hash it records then
    differs from the store's, so the next refresh builds the catalog again.
    """
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "catalog.duckdb"
        guarded = set()
        with duckdb.connect(str(path), config={"file_search_path": str(store.root)}) as con:
            for name, view in views.items():
                for damaged in create_view(con, name, view, store):
                    guarded.add(name)
                    print(f"warning: catalog view {name} leaves out the damaged file {damaged}; "
                          "featurestore validate names every damaged file", file=sys.stderr)
                con.execute(f'COMMENT ON VIEW "{name}" IS {_quote_literal(_COMMENT)}')
            recorded = _definitions_hash({name: view for name, view in views.items() if name not in guarded})
            con.execute(f"CREATE TABLE {_META_TABLE} AS SELECT ? AS definitions_hash", [recorded])
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
    write_bytes_atomic(_catalog_bytes(store, views), store.catalog_path)
    return True
