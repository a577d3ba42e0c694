"""The offline feature store: feature rows as parquet, one sorted file per view version, symbol and year.

Paths are ``featurestore.layout``'s:
``kind=features/view=<name>/version=<v>/exchange=<x>/symbol=<url-quoted>/year=<yyyy>/features.parquet``.

Rows as read: ``symbol``, ``ts`` (the feature row's time: the close of the last bar it uses), one Float64
column per feature, ``created_at`` (when the row was written) and ``view_version``. The files hold all
but ``symbol``, which lives in their path like the other partition keys (``featurestore.store``). Versions
live side by side, so a changed definition never mixes with rows of another version.

>>> import tempfile
>>> from featurestore.builtin_views import RESEARCH
>>> read_features(Store(tempfile.mkdtemp()), RESEARCH)
Traceback (most recent call last):
...
featurestore.errors.FeatureStoreError: no stored features for view 'research' (version ...); run `featurestore backfill --view research`
"""

from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import polars as pl

from featurestore.atomic import atomic_path
from featurestore.definitions import FeatureView
from featurestore.errors import FeatureStoreError, VersionSkewError
from featurestore.store import Store, scan_partition, split_by_year

__all__ = ["StoredRange", "read_features", "read_symbol_features", "stored_range", "write_symbol_features"]


@dataclass(frozen=True)
class StoredRange:
    """What is stored for one symbol: row count and first/last ``ts`` (None when nothing is)."""

    rows: int
    first: datetime | None
    last: datetime | None


def _files(store: Store, view: FeatureView, exchange: str, symbol: str) -> list[Path]:
    return store.feature_files(view.name, view.version, exchange, [symbol])


def stored_range(store: Store, view: FeatureView, exchange: str | None = None,
                 symbol: str | None = None) -> StoredRange:
    """Row count and time range of the view's stored rows: one symbol's, or (without ``exchange`` and
    ``symbol``) all of them. Reads only parquet metadata and ``ts``."""
    files = (_files(store, view, exchange, symbol) if symbol is not None
             else store.feature_files(view.name, view.version, exchange))
    if not files:
        return StoredRange(0, None, None)
    rows, first, last = scan_partition(files, {}).select(
        pl.len(), pl.col("ts").min().alias("first"), pl.col("ts").max().alias("last")).collect().row(0)
    return StoredRange(rows, first, last)


def read_symbol_features(store: Store, view: FeatureView, exchange: str, symbol: str) -> pl.DataFrame | None:
    """One symbol's stored rows of the view's current version, sorted by ts (None when nothing is stored)."""
    files = _files(store, view, exchange, symbol)
    return scan_partition(files, {"symbol": symbol}).collect() if files else None


def write_symbol_features(store: Store, view: FeatureView, exchange: str, symbol: str, rows: pl.DataFrame,
                          *, now: datetime, replace: bool) -> int:
    """Store one symbol's feature rows (sorted by ts); ``replace`` drops what was stored before.

    Without ``replace`` the rows are merged by ``ts`` into the year files (rows already stored are
    kept as they are). Each file is replaced atomically. Returns the number of rows written.
    """
    if rows.is_empty() and not replace:
        return 0
    stamped = _stamped(rows, now, view.version)
    written, fresh = 0, set()
    with contextlib.ExitStack() as renames:
        if replace:  # nothing stored is read: encode before taking the lock, so other symbols' writers overlap
            for year, part in split_by_year(stamped):
                fresh.add(path := store.feature_year_file(view.name, view.version, exchange, symbol, year))
                _write_parquet(part, renames.enter_context(atomic_path(path)))
                written += part.height
        with store.write_lock():
            if replace:
                stale = set(_files(store, view, exchange, symbol)) - fresh
                renames.close()  # fsync and rename every encoded file
                for path in stale:
                    path.unlink()
                return written
            for year, part in split_by_year(stamped):
                path = store.feature_year_file(view.name, view.version, exchange, symbol, year)
                if path.exists():
                    stored = scan_partition([path], {"symbol": symbol}).collect()
                    part = pl.concat([stored, part.join(stored.select("ts"), on="ts", how="anti")]).sort("ts")
                    written += part.height - stored.height
                else:
                    written += part.height
                with atomic_path(path) as tmp:
                    _write_parquet(part, tmp)
    return written


def _stamped(rows: pl.DataFrame, now: datetime, version: str) -> pl.DataFrame:
    """``rows`` with ``created_at`` and ``view_version``: one row computed, then repeated (a cast or a string
    per row cost about a quarter of computing the features)."""
    stamp = pl.select(created_at=pl.lit(now).cast(pl.Datetime("us", "UTC")), view_version=pl.lit(version))
    return rows.hstack([column.new_from_index(0, rows.height) for column in stamp.iter_columns()])


def _write_parquet(rows: pl.DataFrame, path: Path) -> None:
    # Uncompressed: feature values are near-random floats that no codec shrinks, so a codec only costs time:
    # files 1.8% larger than with snappy (its gain was the ts column), written with 0.76x its CPU. The study of
    # encodings and codecs: docs/storage.md.
    rows.drop("symbol").write_parquet(path, compression="uncompressed", statistics=True)


def read_features(store: Store, view: FeatureView, *, symbols: list[str] | None = None,
                  version: str | None = None) -> pl.LazyFrame:
    """Stored rows of ``view``, sorted by ``(symbol, ts)``.

    Reads the rows of the view's current definitions; rows stored by other definitions are refused
    (``VersionSkewError``) unless that ``version`` is asked for explicitly.
    """
    wanted = version or view.version
    files = store.feature_files(view.name, wanted, symbols=symbols)
    if files:
        return pl.concat([scan_partition(list(group), {"symbol": symbol})
                          for symbol, group in itertools.groupby(files, key=store.feature_file_symbol)])
    others = [v for v in store.stored_versions(view.name) if v != wanted]
    if others and version is None:
        raise VersionSkewError(
            f"view {view.name!r}: stored features are version(s) {', '.join(others)}, but the current definitions "
            f"are version {view.version}; run `featurestore backfill --view {view.name}` to compute this version, "
            f"or read an old version explicitly with version=...")
    raise FeatureStoreError(f"no stored features for view {view.name!r} (version {wanted})"
                            f"{' and symbols ' + str(symbols) if symbols else ''}; "
                            f"run `featurestore backfill --view {view.name}`")
