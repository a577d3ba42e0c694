"""Closed bars polled from an exchange through ccxt, as a Bytewax source: one partition per symbol.

Each partition polls ``fetch_closed_bars`` from its cursor (the bar after the last one it emitted)
up to the clock's now, so whatever a failed poll or a stopped process missed is fetched again on
the next poll: gaps are closed by re-fetching, never by inventing bars. Bars already emitted are
dropped (dedupe by open time), and each bar is emitted as one ``Bar``. The resume state is the open
time of the last bar emitted.

Polls are scheduled on the clock: just after the next bar should have closed (plus ``settle_s``), or
``poll_interval_s`` later when the exchange has not published it yet. A network failure is logged
and retried after ``backoff_s``, doubling per consecutive failure up to ``max_backoff_s``; any other
exchange error (unknown symbol, ...) stops the flow. Without a resume state a partition starts after
the newest stored bar of its series, or at ``since_ms`` when given. ``until_ms`` ends the partition
once every bar opening before it has been emitted (tests; otherwise it runs forever).

Typical use (needs the network)::

    source = LiveSource(Store("store"), lambda: make_client("binance"), "1m", ["BTC/USDT"], clock=wall_clock_ms)
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

import ccxt
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from featurestore.errors import ExchangeError, FeatureStoreError
from featurestore.sources.exchange import fetch_closed_bars
from featurestore.store import BarSeries, Store
from featurestore.timeframes import timeframe_ms
from streaming.clock import Clock, to_datetime, to_ms
from streaming.items import Bar

__all__ = ["LiveSource", "exchange_id", "first_bar_after_stored"]

log = logging.getLogger(__name__)


def exchange_id(exchange: str | None) -> str:
    """The ccxt id of ``exchange`` (default binance): the exchange its stored series are kept under."""
    return (exchange or "binance").strip().lower()


def first_bar_after_stored(store: Store, exchange: str, timeframe: str, symbol: str) -> int:
    """Open time (ms) of the bar after the newest stored ``timeframe`` bar of ``symbol`` on ``exchange``: where a
    partition without a resume state and without a start begins. No stored bar is an error naming the fix;
    ``featurestore stream`` checks it before the flow starts, so no Rust panic precedes it."""
    newest = store.last_bar_ts(BarSeries(exchange, timeframe, symbol))
    if newest is None:
        raise FeatureStoreError(
            f"no stored {timeframe} bars of {symbol} from {exchange} to start the live stream after; "
            f"ingest some history first (featurestore ingest --source ccxt --exchange {exchange} "
            f"--symbols {symbol} --timeframe {timeframe}) or give a start time (--start)")
    return to_ms(newest) + timeframe_ms(timeframe)


class LiveSource(FixedPartitionedSource[Bar, int]):
    """Closed ``timeframe`` bars of ``symbols`` from the exchange ``client_factory()`` connects to."""

    def __init__(self, store: Store, client_factory: Callable[[], ccxt.Exchange], timeframe: str,
                 symbols: list[str], *, clock: Clock, since_ms: int | None = None, until_ms: int | None = None,
                 poll_interval_s: float = 5.0, settle_s: float = 2.0, backoff_s: float = 1.0,
                 max_backoff_s: float = 60.0, page_limit: int = 1000) -> None:
        self.store, self.client_factory, self.timeframe, self.symbols = store, client_factory, timeframe, list(symbols)
        self.clock, self.since_ms, self.until_ms = clock, since_ms, until_ms
        self.poll_ms, self.settle_ms = int(poll_interval_s * 1000), int(settle_s * 1000)
        self.backoff_ms, self.max_backoff_ms = int(backoff_s * 1000), int(max_backoff_s * 1000)
        self.page_limit = page_limit

    def list_parts(self) -> list[str]:
        return self.symbols

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _LivePartition:
        client = self.client_factory()
        if resume_state is not None:
            cursor = resume_state + timeframe_ms(self.timeframe)
        elif self.since_ms is not None:
            cursor = self.since_ms
        else:
            cursor = first_bar_after_stored(self.store, client.id, self.timeframe, for_part)
        return _LivePartition(self, client, for_part, cursor=cursor, last_emitted=resume_state)


class _LivePartition(StatefulSourcePartition[Bar, int]):
    def __init__(self, source: LiveSource, client: ccxt.Exchange, symbol: str, *, cursor: int,
                 last_emitted: int | None) -> None:
        self._source, self._client, self._symbol = source, client, symbol
        self._step = timeframe_ms(source.timeframe)
        self._cursor, self._last = cursor, last_emitted
        self._failures = 0
        self._wake = source.clock()

    def _done(self) -> bool:
        return self._source.until_ms is not None and self._cursor >= self._source.until_ms

    def next_batch(self) -> list[Bar]:
        if self._done():
            raise StopIteration
        source, now = self._source, self._source.clock()
        bars: list[Bar] = []
        try:
            for page in fetch_closed_bars(self._client, self._symbol, source.timeframe, since_ms=self._cursor,
                                          until_ms=source.until_ms or now, now_ms=now,
                                          page_limit=source.page_limit, max_retries=0):
                self._take(page.rows(), bars)
        except ExchangeError as exc:
            if not isinstance(exc.__cause__, ccxt.OperationFailed):
                raise  # not transient (unknown symbol, bad request...): retrying cannot help
            self._failures += 1
            delay = min(source.backoff_ms * 2 ** (self._failures - 1), source.max_backoff_ms)
            log.warning("%s: poll failed (%d in a row), retrying in %.1f s: %s",
                        self._symbol, self._failures, delay / 1000, exc)
            self._wake = now + delay
            return bars
        self._failures = 0
        next_close = self._cursor + self._step
        self._wake = next_close + source.settle_ms if next_close + source.settle_ms > now else now + source.poll_ms
        return bars

    def _take(self, rows: list[tuple], bars: list[Bar]) -> None:
        """Append the rows not emitted yet (a page may repeat the last bar) and move the cursor past them."""
        for symbol, ts, *prices in rows:
            ts_ms = to_ms(ts)
            if self._last is None or ts_ms > self._last:
                bars.append(Bar(symbol, ts_ms, *prices))
                self._last, self._cursor = ts_ms, ts_ms + self._step

    def next_awake(self) -> datetime:
        return to_datetime(self._wake)

    def snapshot(self) -> int | None:
        return self._last
