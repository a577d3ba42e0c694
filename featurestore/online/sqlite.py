"""The embedded online store: SQLite, one file (``<store>/online.sqlite`` by default), WAL mode.

The streaming flow writes; any number of readers, in any process, read while it writes. A reader keeps
one connection open; sqlite3 caches the prepared statements, so ``latest`` is a few microseconds. The
interface and its rules are ``featurestore.online.OnlineStore``'s.

>>> import tempfile
>>> from datetime import datetime, timedelta, timezone
>>> path = Path(tempfile.mkdtemp()) / "online.sqlite"
>>> t = datetime(2024, 5, 1, 0, 1, tzinfo=timezone.utc)
>>> with SqliteOnlineStore(path) as online:
...     online.put_many([OnlineRow("research", "BTC/USDT", t, "v1", {"ret_1": 0.5, "rv_24": None}, t)])
...     online.put_many([OnlineRow("research", "BTC/USDT", t - timedelta(minutes=1), "v1", {"ret_1": 9.0}, t)])
1
0
>>> with SqliteOnlineStore(path, readonly=True) as online:
...     row = online.latest("research", "BTC/USDT")
>>> row.ts, row.features
(datetime.datetime(2024, 5, 1, 0, 1, tzinfo=datetime.timezone.utc), {'ret_1': 0.5, 'rv_24': None})
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path

from featurestore.errors import FeatureStoreError
from featurestore.online import OnlineRow, OnlineStore
from featurestore.online.encoding import decode_features, encode_features, epoch_ms, from_epoch_ms

__all__ = ["SqliteOnlineStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS online_features (
    view TEXT NOT NULL,
    symbol TEXT NOT NULL,
    ts INTEGER NOT NULL,            -- the row's time, epoch ms UTC (the close of the last bar it uses)
    view_version TEXT NOT NULL,
    features TEXT NOT NULL,         -- JSON object, feature name -> float or null, in definition order
    updated_at INTEGER NOT NULL,    -- when the row was written, epoch ms UTC
    PRIMARY KEY (view, symbol)
) WITHOUT ROWID
"""
_UPSERT = """
INSERT INTO online_features (view, symbol, ts, view_version, features, updated_at) VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (view, symbol) DO UPDATE SET
    ts = excluded.ts, view_version = excluded.view_version, features = excluded.features,
    updated_at = excluded.updated_at
WHERE excluded.ts > online_features.ts
   OR (excluded.ts = online_features.ts AND excluded.view_version = online_features.view_version)
"""
_COLUMNS = "symbol, ts, view_version, features, updated_at"
_GET = f"SELECT {_COLUMNS} FROM online_features WHERE view = ? AND symbol = ?"
_GET_MANY = f"SELECT {_COLUMNS} FROM online_features WHERE view = ? AND symbol IN (SELECT value FROM json_each(?))"
# one primary-key lookup per view, symbol bound once (?1): 25% faster than ``symbol = ? AND view IN (...)``
_GET_VIEW = "SELECT view, ts, view_version, features, updated_at FROM online_features WHERE view = ?{} AND symbol = ?1"
_GET_ALL = f"SELECT {_COLUMNS} FROM online_features WHERE view = ? ORDER BY symbol"


class SqliteOnlineStore(OnlineStore):
    """One connection to an online store file; ``readonly=True`` for readers (the file must exist)."""

    def __init__(self, path: str | os.PathLike, *, readonly: bool = False, timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        try:
            self._open(readonly, timeout_s)
            self._con.execute("SELECT 1 FROM online_features LIMIT 0")  # a damaged file fails here, not mid-command
        except sqlite3.DatabaseError as exc:
            raise FeatureStoreError(f"online store {self.path} cannot be read ({exc}); move it aside and rebuild it "
                                    "(featurestore stream or materialize)") from None

    def _open(self, readonly: bool, timeout_s: float) -> None:
        if readonly:
            if not self.path.exists():
                raise FeatureStoreError(f"no online store at {self.path}; run `featurestore stream` to fill it")
            self._con = sqlite3.connect(f"{self.path.absolute().as_uri()}?mode=ro", uri=True, timeout=timeout_s,
                                        isolation_level=None, check_same_thread=False)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._con = sqlite3.connect(self.path, timeout=timeout_s, isolation_level=None,
                                        check_same_thread=False)
            # Switching a new file to WAL takes an exclusive lock that SQLite's busy timeout does not wait for:
            # writers opening the store at once (one per dataflow worker) take turns through a file lock.
            with open(self.path.with_name(self.path.name + ".lock"), "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                self._con.execute("PRAGMA journal_mode = WAL")
                self._con.execute(_SCHEMA)
            self._con.execute("PRAGMA synchronous = NORMAL")  # durable at checkpoints; never corrupt

    def close(self) -> None:
        self._con.close()

    def put_many(self, rows: Iterable[OnlineRow]) -> int:
        """Upsert ``rows`` in one transaction; return how many were inserted or replaced."""
        params = [(r.view, r.symbol, epoch_ms(r.ts), r.view_version, encode_features(r.features), epoch_ms(r.updated_at))
                  for r in rows]
        before = self._con.total_changes
        self._con.execute("BEGIN IMMEDIATE")
        try:
            self._con.executemany(_UPSERT, params)
        except BaseException:
            self._con.execute("ROLLBACK")
            raise
        self._con.execute("COMMIT")
        return self._con.total_changes - before

    def latest(self, view: str, symbol: str) -> OnlineRow | None:
        """The latest row of ``symbol`` in ``view``, or None."""
        found = self._con.execute(_GET, (view, symbol)).fetchone()
        return None if found is None else _row(view, found)

    def get_views(self, views: Sequence[str], symbol: str) -> dict[str, OnlineRow]:
        """The latest rows of ``symbol`` in each of ``views``, in one query (views without a row are left out)."""
        sql = _get_views_sql(len(views))
        return {view: OnlineRow(view, symbol, from_epoch_ms(ts), version, decode_features(features),
                                from_epoch_ms(updated_at))
                for view, ts, version, features, updated_at in self._con.execute(sql, (symbol, *views))}

    def get_many(self, view: str, symbols: Iterable[str]) -> dict[str, OnlineRow]:
        """The latest rows of ``symbols`` (in the order asked; symbols without a row are left out)."""
        wanted = list(symbols)
        found = {row[0]: _row(view, row) for row in self._con.execute(_GET_MANY, (view, json.dumps(wanted)))}
        return {symbol: found[symbol] for symbol in wanted if symbol in found}

    def rows(self, view: str) -> list[OnlineRow]:
        """Every stored row of ``view``, by symbol."""
        return [_row(view, row) for row in self._con.execute(_GET_ALL, (view,))]


@functools.cache
def _get_views_sql(views: int) -> str:
    """The query of ``get_views`` for that many views (sqlite3 caches the statement per text)."""
    return " UNION ALL ".join(_GET_VIEW.format(k + 2) for k in range(views))


def _row(view: str, found: tuple) -> OnlineRow:
    symbol, ts, version, features, updated_at = found
    return OnlineRow(view, symbol, from_epoch_ms(ts), version, decode_features(features), from_epoch_ms(updated_at))
