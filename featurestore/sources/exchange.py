"""Closed bars from a real exchange through ccxt: a rate-limited client and a paginated, retrying fetch.

Time is always passed in (``now_ms``); nothing here reads the clock. A bar is closed once
``ts + timeframe <= now_ms`` (see ``docs/semantics.md``), so the in-progress candle that
``fetch_ohlcv`` returns last never leaves this module.

>>> make_client("binanse")
Traceback (most recent call last):
...
featurestore.errors.FeatureStoreError: unknown ccxt exchange id 'binanse'; did you mean 'binance', 'binanceus' or 'coinbase'? (all ids: ccxt.exchanges)

Typical use (needs the network)::

    client = make_client("binance")
    for page in fetch_closed_bars(client, "BTC/USDT", "1h", since_ms=1_704_067_200_000,
                                  until_ms=1_704_153_600_000, now_ms=1_735_689_600_000):
        print(page.height)
"""

from __future__ import annotations

import difflib
import os
import re
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import ccxt
import polars as pl

from featurestore.bars import BAR_COLUMNS, TS_DTYPE
from featurestore.errors import ExchangeError, FeatureStoreError
from featurestore.timeframes import timeframe_ms

__all__ = ["DEFAULT_TIMEOUT_MS", "EXCHANGE_URL_ENV", "fetch_closed_bars", "make_client"]

DEFAULT_TIMEOUT_MS = 30_000
EXCHANGE_URL_ENV = "FEATURESTORE_EXCHANGE_URL"
_SCHEMA = {"symbol": pl.String, "ts": pl.Int64, **{name: pl.Float64 for name in BAR_COLUMNS[2:]}}


def make_client(exchange_id: str, *, api_url: str | None = None, **config: Any) -> ccxt.Exchange:
    """A ccxt client that respects the exchange's rate limit (``enableRateLimit`` is always on).

    ``config`` goes to the ccxt constructor (``timeout`` in ms, default 30 s; ``options``; ...).
    ``api_url`` (default: ``$FEATURESTORE_EXCHANGE_URL``, for the CLI) sends every request to this origin
    instead of the exchange's, with ccxt's own paths: a local test server or a recording proxy.
    An unknown id or an exchange without ``fetchOHLCV`` raises ``FeatureStoreError``.

    >>> client = make_client("binance", timeout=5_000)
    >>> client.id, client.enableRateLimit, client.timeout
    ('binance', True, 5000)
    >>> make_client("binance", api_url="http://127.0.0.1:8080").urls["api"]["public"]
    'http://127.0.0.1:8080/api/v3'
    """
    normalized = exchange_id.strip().lower()
    if normalized not in ccxt.exchanges:
        close = [repr(c) for c in difflib.get_close_matches(normalized, ccxt.exchanges, n=3)]
        hint = f"did you mean {_one_of(close)}?" if close else "no close match"
        raise FeatureStoreError(f"unknown ccxt exchange id {exchange_id!r}; {hint} (all ids: ccxt.exchanges)")
    client: ccxt.Exchange = getattr(ccxt, normalized)({"timeout": DEFAULT_TIMEOUT_MS, **config,
                                                        "enableRateLimit": True})
    if not client.has.get("fetchOHLCV"):
        raise FeatureStoreError(
            f"exchange {exchange_id!r} has no OHLCV endpoint in ccxt (has['fetchOHLCV'] is "
            f"{client.has.get('fetchOHLCV')!r}); choose an exchange that serves candles, e.g. 'binance'"
        )
    origin = api_url or os.environ.get(EXCHANGE_URL_ENV)
    if origin:
        client.urls["api"] = _rebased(client.urls["api"], origin.rstrip("/"))
    return client


def _rebased(urls: dict | str, origin: str) -> dict | str:
    """ccxt's API URLs (a URL or a nested dict of them) with ``origin`` in place of scheme and host."""
    if isinstance(urls, dict):
        return {name: _rebased(url, origin) for name, url in urls.items()}
    return re.sub(r"^https?://[^/]+", origin, urls)


def _one_of(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


def _fetch_page(client: ccxt.Exchange, symbol: str, timeframe: str, since_ms: int, limit: int, *,
                max_retries: int, backoff_s: float, sleep: Callable[[float], object]) -> list[list]:
    """One ``fetch_ohlcv`` call; transient failures are retried ``max_retries`` times with exponential backoff."""
    where = f"{client.id}: fetching {symbol} {timeframe} bars since {_when(since_ms)}"
    last_error: ccxt.OperationFailed | None = None
    for attempt in range(max_retries + 1):
        if attempt:
            sleep(backoff_s * 2 ** (attempt - 1))
        try:
            return client.fetch_ohlcv(symbol, timeframe, since=since_ms, limit=limit)
        except ccxt.OperationFailed as exc:
            # NetworkError (RateLimitExceeded, DDoSProtection, RequestTimeout, ExchangeNotAvailable...) and its
            # parent OperationFailed, which ccxt raises for "internal error, please try again" answers such as
            # Binance's {"code": -1001} and for empty or malformed responses (BadResponse, NullResponse)
            last_error = exc
        except ccxt.BaseError as exc:  # BadSymbol, BadRequest, AuthenticationError...: retrying cannot help
            raise ExchangeError(f"{where} failed: {type(exc).__name__}: {exc}") from exc
    raise ExchangeError(
        f"{where} failed after {max_retries + 1} attempts ({max_retries} retries with backoff); "
        f"last error: {type(last_error).__name__}: {last_error}"
    ) from last_error


def _page_frame(symbol: str, rows: list[list]) -> pl.DataFrame:
    frame = pl.DataFrame([[symbol, *row[:6]] for row in rows], schema=_SCHEMA, orient="row")
    return frame.with_columns(pl.col("ts").cast(pl.Datetime("ms")).dt.replace_time_zone("UTC").cast(TS_DTYPE))


def fetch_closed_bars(client: ccxt.Exchange, symbol: str, timeframe: str, *, since_ms: int, until_ms: int,
                      now_ms: int, page_limit: int = 1000, max_retries: int = 5, backoff_s: float = 1.0,
                      sleep: Callable[[float], object] = time.sleep) -> Iterator[pl.DataFrame]:
    """Yield the closed bars with ``since_ms <= ts < until_ms`` one page at a time, in the bar schema.

    Pages are requested sequentially with ``client.fetch_ohlcv(symbol, timeframe, since=cursor,
    limit=page_limit)``; the next page starts at the newest returned ``ts`` plus one timeframe. The
    fetch stops on an empty page, on a page that makes no progress, or once the cursor passes
    ``until_ms`` or the last closed bar at ``now_ms``. Rows before the cursor, duplicate ``ts`` (the
    first one wins) and bars still open at ``now_ms`` are dropped, so pages never overlap.

    A transient failure (``ccxt.NetworkError``, or its parent ``ccxt.OperationFailed``) is retried after
    ``backoff_s * 2**attempt`` seconds (through ``sleep``; ``attempt`` counts retries from 0); after
    ``max_retries`` retries, or at once for any other ccxt error (``BadSymbol``...), ``ExchangeError``
    is raised. Bars already yielded stay yielded. A page with no bar left to keep is not yielded.
    """
    if page_limit < 1 or max_retries < 0:
        raise FeatureStoreError(f"need page_limit >= 1 and max_retries >= 0, got {page_limit} and {max_retries}")
    step = timeframe_ms(timeframe)
    stop = min(until_ms, now_ms - step + 1)  # ts < stop  <=>  ts < until_ms and ts + step <= now_ms
    cursor = since_ms
    while cursor < stop:
        rows = _fetch_page(client, symbol, timeframe, cursor, page_limit,
                           max_retries=max_retries, backoff_s=backoff_s, sleep=sleep)
        if not rows:
            return
        newest = max(int(row[0]) for row in rows)
        if newest < cursor:
            return  # the exchange answered only bars we already have: no progress
        kept: dict[int, list] = {}
        for row in sorted(rows, key=lambda r: int(r[0])):
            ts = int(row[0])
            if cursor <= ts < stop and ts not in kept:
                kept[ts] = [ts, *row[1:6]]
        if kept:
            yield _page_frame(symbol, list(kept.values()))
        cursor = newest + step
