"""The Redis online store: ``redis://host:port/db``, one server that every process of a cluster writes and reads.

Each (view, symbol) has a *head* naming the version of its latest row, and the row under a key that
carries that version (``redis-cli --scan --pattern 'fs:*:research:<version>'`` lists one definition's rows)::

    fs:{BTC/USDT}:research                     string: the version of the latest row, e.g. 3f9c1e0a2b4d5c6e
    fs:{BTC/USDT}:research:3f9c1e0a2b4d5c6e    hash: ts and updated_at (epoch ms), features (JSON, as SQLite's)

The symbol is the keys' hash tag: all of a symbol's keys share one hash slot, so one script reads them.

- **Writes.** ``put_many`` hands its rows to a Lua script that applies the rule of every backend (a row
  replaces the stored one only with a newer ``ts``, or the same ``ts`` and version) inside Redis, where
  scripts run one at a time: two writers racing cannot move a row back in time. A batch is one pipeline
  (one round trip) of script calls of up to ``CHUNK`` rows; each call is atomic, a batch is not (a reader
  may see some of its symbols updated before others). A newer version's row replaces the old version's.
- **Reads.** One read-only script call per read: ``get_views`` reads all of a symbol's views in one round
  trip, ``get_many`` all the symbols asked of a view.
- **Expiry.** Every write sets the row and its head to expire the view's TTL after the write: explicitly
  ``?ttl=2h`` (every view) or ``?ttl=research=2h,daily_trend=3d`` in the URL, else the TTL the writer
  gives for its view (the streaming sink and ``materialize``: one timeframe, the TTL training and the
  scorer use by default). Rows are written at or after their own time, so a row never expires before
  the scorer would refuse it as stale under that TTL; a view without either never expires. Replaying
  history into Redis or scoring with a longer ``--max-age``: set ``?ttl=`` to keep rows that long.

>>> from datetime import datetime, timezone
>>> t = datetime(2024, 5, 1, 0, 1, tzinfo=timezone.utc)
>>> redis_url  # a running server's (the tests start one)
'redis://127.0.0.1:...'
>>> with RedisOnlineStore(redis_url + "?ttl=1h") as online:
...     online.put_many([OnlineRow("research", "BTC/USDT", t, "v1", {"ret_1": 0.5}, t)])
...     online.put_many([OnlineRow("research", "BTC/USDT", t - timedelta(minutes=1), "v1", {"ret_1": 9.0}, t)])
...     online.get_views(["research", "daily_trend"], "BTC/USDT")["research"].features
...     0 < online.expiry_ms("research", "BTC/USDT") <= 3_600_000
1
0
{'ret_1': 0.5}
True
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import timedelta
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis

from featurestore.durations import parse_view_durations
from featurestore.errors import FeatureStoreError
from featurestore.online import OnlineRow, OnlineStore
from featurestore.online.encoding import decode_features, encode_features, epoch_ms, from_epoch_ms

__all__ = ["CHUNK", "RedisOnlineStore"]

CHUNK = 1_000  # rows per script call: bounds how long one call holds the server
_ARGS_PER_ROW = 5
T = TypeVar("T")

# KEYS: one head per row; ARGV: per row its version, ts, updated_at, features and expiry in ms (0: none).
_UPSERT = """
local changed = 0
for i, head in ipairs(KEYS) do
  local a = 5 * (i - 1)
  local version, ts, px = ARGV[a + 1], tonumber(ARGV[a + 2]), tonumber(ARGV[a + 5])
  local current = redis.call('GET', head)
  local stored = current and tonumber(redis.call('HGET', head .. ':' .. current, 'ts'))
  if not stored or ts > stored or (ts == stored and version == current) then
    if current and current ~= version then
      redis.call('DEL', head .. ':' .. current)
    end
    local row = head .. ':' .. version
    redis.call('HSET', row, 'ts', ARGV[a + 2], 'updated_at', ARGV[a + 3], 'features', ARGV[a + 4])
    if px > 0 then
      redis.call('SET', head, version, 'PX', px)
      redis.call('PEXPIRE', row, px)
    else
      redis.call('SET', head, version)
      redis.call('PERSIST', row)
    end
    changed = changed + 1
  end
end
return changed
"""

# KEYS: heads; returns, per head, {version, ts, updated_at, features} or nil.
_READ = """#!lua flags=no-writes
local out = {}
for i, head in ipairs(KEYS) do
  local version = redis.call('GET', head)
  local row = version and redis.call('HMGET', head .. ':' .. version, 'ts', 'updated_at', 'features')
  if row and row[1] then
    out[i] = {version, row[1], row[2], row[3]}
  else
    out[i] = false
  end
end
return out
"""


def _head(view: str, symbol: str) -> str:
    return f"fs:{{{symbol}}}:{view}"


def _redacted(url: str) -> str:
    """``url`` without its password."""
    return re.sub(r"//([^:@/]*):[^@/]*@", r"//\1:***@", url)


def _parse(url: str) -> tuple[str, timedelta | dict[str, timedelta] | None]:
    """(the URL for redis-py, the explicit ``ttl`` of its query if any)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    given = [value for key, value in query if key == "ttl"]
    try:
        ttl = parse_view_durations(given[-1]) if given else None
    except FeatureStoreError as exc:
        raise FeatureStoreError(f"online store URL {_redacted(url)}: ttl: {exc}") from None
    rest = urlencode([(key, value) for key, value in query if key != "ttl"])
    return urlunsplit(parts._replace(query=rest)), ttl


class RedisOnlineStore(OnlineStore):
    """A connection (pool) to the Redis server at ``url``; ``readonly`` refuses writes.

    ``ttl``: the writer's default expiry per view, used where the URL's ``?ttl=`` names none.
    """

    def __init__(self, url: str, *, readonly: bool = False, ttl: Mapping[str, timedelta] | None = None) -> None:
        self.url, self.readonly = _redacted(url), readonly
        base, explicit = _parse(url)
        self._every = explicit if isinstance(explicit, timedelta) else None
        self._expiry = {**(ttl or {}), **(explicit if isinstance(explicit, dict) else {})}
        try:
            self._client = redis.Redis.from_url(base, socket_connect_timeout=5, socket_timeout=30)
        except ValueError as exc:
            raise FeatureStoreError(f"online store URL {self.url}: {exc}; use redis://host:port/db") from None
        self._upsert_sha, self._read_sha = self._call(lambda: (self._client.script_load(_UPSERT),
                                                           self._client.script_load(_READ)))

    def close(self) -> None:
        self._client.close()

    def _call(self, fn: Callable[[], T]) -> T:
        """``fn()``, its connection errors reported as the store's; scripts loaded again if the server lost them."""
        try:
            try:
                return fn()
            except redis.exceptions.NoScriptError:  # the server restarted or flushed its scripts: every call is
                self._upsert_sha = self._client.script_load(_UPSERT)  # idempotent, so run it again
                self._read_sha = self._client.script_load(_READ)
                return fn()
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            raise FeatureStoreError(f"cannot reach the online store at {self.url} ({exc}); is redis-server running "
                                    f"there? (online_store in featurestore.toml)") from None

    def _expiry_ms(self, view: str) -> int:
        ttl = self._every or self._expiry.get(view)
        return 0 if ttl is None else max(1, ttl // timedelta(milliseconds=1))

    def put_many(self, rows: Iterable[OnlineRow]) -> int:
        """Upsert ``rows`` in one round trip; return how many were inserted or replaced."""
        if self.readonly:
            raise FeatureStoreError(f"the online store at {self.url} was opened read-only")
        keys: list[str] = []
        args: list[Any] = []
        for row in rows:
            keys.append(_head(row.view, row.symbol))
            args += (row.view_version, epoch_ms(row.ts), epoch_ms(row.updated_at), encode_features(row.features),
                     self._expiry_ms(row.view))
        if not keys:
            return 0

        def send() -> int:
            with self._client.pipeline(transaction=False) as pipe:
                for start in range(0, len(keys), CHUNK):
                    chunk = keys[start:start + CHUNK]
                    pipe.evalsha(self._upsert_sha, len(chunk), *chunk,
                                 *args[start * _ARGS_PER_ROW:(start + len(chunk)) * _ARGS_PER_ROW])
                return sum(pipe.execute())

        return self._call(send)

    def _rows(self, wanted: Sequence[tuple[str, str]]) -> list[OnlineRow | None]:
        """The latest row of each (view, symbol) in ``wanted`` (None where there is none), in one script call."""
        heads = [_head(view, symbol) for view, symbol in wanted]
        found = self._call(lambda: self._client.evalsha(self._read_sha, len(heads), *heads))
        return [None if got is None else OnlineRow(view, symbol, from_epoch_ms(int(got[1])), got[0].decode(),
                                                   decode_features(got[3]), from_epoch_ms(int(got[2])))
                for (view, symbol), got in zip(wanted, found, strict=True)]

    def latest(self, view: str, symbol: str) -> OnlineRow | None:
        """The latest row of ``symbol`` in ``view``, or None."""
        return self._rows([(view, symbol)])[0]

    def get_views(self, views: Sequence[str], symbol: str) -> dict[str, OnlineRow]:
        """The latest rows of ``symbol`` in each of ``views``, in one round trip (views without a row are left out)."""
        return {row.view: row for row in self._rows([(view, symbol) for view in views]) if row is not None}

    def get_many(self, view: str, symbols: Iterable[str]) -> dict[str, OnlineRow]:
        """The latest rows of ``symbols`` (in the order asked; symbols without a row are left out), in one round trip."""
        wanted = list(dict.fromkeys(symbols))
        if not wanted:
            return {}
        return {row.symbol: row for row in self._rows([(view, symbol) for symbol in wanted]) if row is not None}

    def rows(self, view: str) -> list[OnlineRow]:
        """Every stored row of ``view``, by symbol (a SCAN of the keyspace: for tools, not for serving)."""
        prefix, suffix = "fs:{", f"}}:{view}"
        heads = self._call(lambda: [key.decode() for key in self._client.scan_iter(match=f"{prefix}*{suffix}",
                                                                                    count=1000)])
        symbols = sorted(head[len(prefix):-len(suffix)] for head in heads)
        found = [row for start in range(0, len(symbols), CHUNK)
                 for row in self._rows([(view, symbol) for symbol in symbols[start:start + CHUNK]])]
        return [row for row in found if row is not None]

    def expiry_ms(self, view: str, symbol: str) -> int | None:
        """Milliseconds until the row of ``symbol`` in ``view`` expires (None: no row, or it never expires)."""
        left = self._call(lambda: self._client.pttl(_head(view, symbol)))
        return left if left >= 0 else None
