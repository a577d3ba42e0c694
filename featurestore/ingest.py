"""Bars in: validate a batch, keep only closed bars, merge it into the store, refresh the catalog.

Sources are read one symbol at a time (a ccxt fetch: in flushes of ``flush_every`` bars; a CSV file holds one
symbol; a resample reads one symbol's fine bars), so memory holds one symbol's bars however many symbols are
ingested.

>>> import tempfile
>>> from datetime import datetime, timezone
>>> store = Store(tempfile.mkdtemp())
>>> ingest_synthetic(store, ["BTC/USDT"], "1h", since=datetime(2024, 1, 1, tzinfo=timezone.utc),
...                  until=datetime(2024, 1, 2, tzinfo=timezone.utc), now=datetime(2025, 1, 1, tzinfo=timezone.utc))
{'BTC/USDT': 24}
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl
from tqdm import tqdm

from featurestore.bars import BAR_COLUMNS, validate_bars
from featurestore.catalog import refresh_catalog
from featurestore.errors import ExchangeError, FeatureStoreError, StoreConflictError
from featurestore.sources.csv_file import read_csv_bars
from featurestore.sources.resample import expected_fine_bars, resample_bars
from featurestore.sources.synthetic import Regime, synthetic_bars
from featurestore.store import BarSeries, Store
from featurestore.timeframes import epoch_ms, timeframe_ms

if TYPE_CHECKING:
    import ccxt

__all__ = ["closed_bars", "ingest_bars", "ingest_csv", "ingest_exchange", "ingest_resampled", "ingest_symbols",
           "ingest_synthetic"]


def closed_bars(bars: pl.DataFrame, timeframe: str, now: datetime) -> pl.DataFrame:
    """Drop bars still in progress at ``now`` (a bar is closed once ``now >= ts + timeframe``)."""
    return bars.filter(pl.col("ts") + pl.duration(milliseconds=timeframe_ms(timeframe)) <= now)


def ingest_bars(store: Store, bars: pl.DataFrame, *, exchange: str, timeframe: str, source: str) -> dict[str, int]:
    """Validate ``bars`` whole (raising before anything is written), store them, return the rows written per
    symbol."""
    checked = validate_bars(bars, timeframe, source=source)
    new_rows = store.write_bars(checked, exchange=exchange, timeframe=timeframe)
    refresh_catalog(store)  # also when nothing was new: a re-run repairs a catalog a killed run left stale
    return new_rows


def ingest_symbols(store: Store, symbols: list[str],
                   bars_of: Callable[[str], tuple[pl.DataFrame, pl.DataFrame | None]], *, exchange: str,
                   timeframe: str, source: str) -> dict[str, int]:
    """Store ``bars_of(symbol)`` for each symbol in turn, so memory holds one symbol's bars; return new rows.

    ``bars_of`` gives a symbol's bars and those of them built from incomplete periods (``partial`` of
    ``Store.write_bars``; None for a source that has none). It must give the same bars when called again:
    each symbol that already has stored bars is built, validated and checked against them first, so that a
    conflict anywhere raises before anything is written (as ``ingest_bars`` does for one batch).
    """
    symbols = list(dict.fromkeys(symbols))
    for symbol in symbols:
        if store.last_bar_ts(BarSeries(exchange, timeframe, symbol)) is not None:
            store.check_bars(validate_bars(bars_of(symbol)[0], timeframe, source=source), exchange=exchange,
                             timeframe=timeframe)
    new_rows: dict[str, int] = {}
    for symbol in symbols:
        bars, partial = bars_of(symbol)
        checked = validate_bars(bars, timeframe, source=source)
        new_rows.update(store.write_bars(checked, exchange=exchange, timeframe=timeframe, partial=partial))
    refresh_catalog(store)
    return new_rows


def ingest_synthetic(store: Store, symbols: list[str], timeframe: str, *, since: datetime,
                     until: datetime | None = None, now: datetime, seed: int = 7,
                     regime: Regime | None = None) -> dict[str, int]:
    """Generate the synthetic market (see ``featurestore.sources.synthetic``) into exchange ``synthetic``,
    one symbol at a time (``ingest_symbols``)."""
    until = min(until or now, now)

    def bars_of(symbol: str) -> tuple[pl.DataFrame, None]:
        bars = synthetic_bars([symbol], timeframe, since=since, until=until, seed=seed, regime=regime)
        return closed_bars(bars, timeframe, now), None

    return ingest_symbols(store, symbols, bars_of, exchange="synthetic", timeframe=timeframe,
                          source=f"synthetic seed {seed}" + (f", {regime}" if regime else ""))


def ingest_csv(store: Store, path: str | Path, *, symbol: str, timeframe: str, now: datetime,
               exchange: str = "csv", since: datetime | None = None, until: datetime | None = None,
               timezone: str | None = None) -> dict[str, int]:
    """Import one symbol's CSV export (``featurestore.sources.csv_file``; naive text times in ``timezone``): the
    whole file is validated, then its closed bars with ``since <= ts < until`` are stored. A file of which no
    bar is left to store is an error saying why, with the count of each reason."""
    bars = validate_bars(read_csv_bars(path, symbol, timezone=timezone), timeframe, source=str(path),
                         first_line=2)  # errors name lines
    in_range = bars.filter(pl.lit(True) if since is None else pl.col("ts") >= since,
                           pl.lit(True) if until is None else pl.col("ts") < until)
    closed = closed_bars(in_range, timeframe, now)
    if closed.is_empty():
        raise FeatureStoreError(_nothing_to_store(path, bars, timeframe, now, since, until))
    return ingest_bars(store, closed, exchange=exchange, timeframe=timeframe, source=str(path))


def _nothing_to_store(path: str | Path, bars: pl.DataFrame, timeframe: str, now: datetime, since: datetime | None,
                      until: datetime | None) -> str:
    """Why none of ``bars`` can be stored: how many rows fall before ``since``, from ``until`` on, open after
    ``now`` or are still open at ``now``."""
    step = timedelta(milliseconds=timeframe_ms(timeframe))
    ts = bars["ts"]
    before = ts < since if since else pl.repeat(False, len(ts), eager=True)
    after = ~before & (ts >= until) if until else pl.repeat(False, len(ts), eager=True)
    future = ~before & ~after & (ts >= now)
    still_open = ~before & ~after & ~future
    reasons = [
        (before, f"before --start {since:%Y-%m-%dT%H:%M:%SZ}; pass an earlier --start" if since else ""),
        (after, f"at or after --end {until:%Y-%m-%dT%H:%M:%SZ}; pass a later --end" if until else ""),
        (future, f"in the future (now is {now:%Y-%m-%dT%H:%M:%SZ}); check the file's time zone (--timezone) "
                 "or its epoch unit (seconds, ms, µs and ns are told apart by magnitude)"),
        (still_open, f"the {timeframe} candle still open at {now:%Y-%m-%dT%H:%M:%SZ} (it closes at "
                     f"{ts.max() + step:%Y-%m-%dT%H:%M:%SZ}; import again after that)"),
    ]
    why = "; ".join(f"{int(mask.sum())} {'is' if mask.sum() == 1 else 'are'} {reason}"
                    for mask, reason in reasons if mask.any())
    return (f"nothing to store from {path}: of its {len(ts)} row(s), from {ts.min():%Y-%m-%dT%H:%M:%SZ} to "
            f"{ts.max():%Y-%m-%dT%H:%M:%SZ}, {why}")


def _epoch_ms(moment: datetime, name: str) -> int:
    if moment.tzinfo is None:
        raise FeatureStoreError(f"{name}={moment.isoformat()} has no timezone; pass an aware UTC datetime, "
                                f"e.g. datetime(2024, 1, 1, tzinfo=timezone.utc)")
    return epoch_ms(moment)


def ingest_exchange(store: Store, exchange: str | ccxt.Exchange, symbols: list[str], timeframe: str, *,
                    since: datetime, until: datetime | None = None, now: datetime, flush_every: int = 50_000,
                    progress: bool = True, **fetch_options: Any) -> dict[str, int]:
    """Fetch closed bars from a ccxt exchange (an id such as ``"binance"`` or a built client) into the store.

    Resumable: each symbol starts at ``max(since, last stored bar + timeframe)`` of the series stored under
    the client's id, and bars are written every ``flush_every`` bars and at the end, so an interrupted run
    keeps what it flushed and the next run continues from there. ``fetch_options`` go to
    ``featurestore.sources.exchange.fetch_closed_bars`` (``page_limit``, ``max_retries``, ``backoff_s``,
    ``sleep``). Returns the new rows per symbol; an ``ExchangeError`` leaves earlier flushes in place.
    """
    from featurestore.sources.exchange import make_client  # imports ccxt (slow to import): only when used

    if flush_every < 1:
        raise FeatureStoreError(f"flush_every must be >= 1, got {flush_every}")
    client = make_client(exchange) if isinstance(exchange, str) else exchange
    step = timeframe_ms(timeframe)
    since_ms, now_ms = _epoch_ms(since, "since"), _epoch_ms(now, "now")
    until_ms = now_ms if until is None else min(_epoch_ms(until, "until"), now_ms)
    new_rows: dict[str, int] = {}
    for symbol in symbols:
        last = store.last_bar_ts(BarSeries(client.id, timeframe, symbol))
        start_ms = since_ms if last is None else max(since_ms, _epoch_ms(last, "stored ts") + step)
        new_rows[symbol] = _ingest_exchange_symbol(
            store, client, symbol, timeframe, start_ms=start_ms, until_ms=until_ms, now_ms=now_ms,
            flush_every=flush_every, progress=progress, fetch_options=fetch_options)
    return new_rows


def _ingest_exchange_symbol(store: Store, client: ccxt.Exchange, symbol: str, timeframe: str, *, start_ms: int,
                            until_ms: int, now_ms: int, flush_every: int, progress: bool,
                            fetch_options: dict[str, Any]) -> int:
    """One symbol of ``ingest_exchange``: fetch pages, write every ``flush_every`` bars, return new rows."""
    from featurestore.sources.exchange import fetch_closed_bars

    step = timeframe_ms(timeframe)
    total = max(0, -(-(min(until_ms, now_ms - step + 1) - start_ms) // step))  # bars that could be fetched
    pending: list[pl.DataFrame] = []
    written = 0

    def flush() -> int:
        if not pending:
            return 0
        frame = pl.concat(pending)
        pending.clear()
        return ingest_bars(store, frame, exchange=client.id, timeframe=timeframe,
                           source=f"{client.id} {symbol}").get(symbol, 0)

    with tqdm(total=total, desc=f"{client.id} {symbol} {timeframe}", unit="bar",
              disable=None if progress else True) as bar:
        pages = fetch_closed_bars(client, symbol, timeframe, since_ms=start_ms, until_ms=until_ms,
                                  now_ms=now_ms, **fetch_options)
        try:
            for page in pages:
                pending.append(page)
                if sum(frame.height for frame in pending) >= flush_every:
                    written += flush()
                covered = (_epoch_ms(page["ts"][-1], "ts") + step - start_ms) // step
                bar.update(min(covered, total) - bar.n)
        except ExchangeError as exc:
            raise ExchangeError(f"{exc}. {written} new {symbol} bars were stored before the failure; "
                                f"run the same ingest again to resume from there") from exc
        written += flush()
        bar.update(total - bar.n)
    return written


def ingest_resampled(store: Store, *, exchange: str, from_timeframe: str, timeframe: str, now: datetime,
                     symbols: list[str] | None = None, allow_partial: bool = False) -> dict[str, int]:
    """Derive ``timeframe`` bars of complete periods from stored ``from_timeframe`` bars of the same exchange
    (``featurestore.sources.resample``), one symbol at a time (``ingest_symbols``); return the rows written per
    symbol.

    ``allow_partial`` also stores ended periods with missing fine bars, recorded as such
    (``featurestore.partial_bars``); fine bars that complete such a period later replace its bar. A named
    symbol without fine bars, a damaged fine file or a conflict with a stored coarse bar in any symbol raises
    before anything is written.
    """
    expected = expected_fine_bars(from_timeframe, timeframe)
    store.scan_bars(exchange, from_timeframe, symbols)  # raises now on a symbol not stored or a damaged file
    chosen = [s.symbol for s in store.series(exchange=exchange, timeframe=from_timeframe, symbols=symbols)]

    def bars_of(symbol: str) -> tuple[pl.DataFrame, pl.DataFrame]:
        fine = store.read_series(BarSeries(exchange, from_timeframe, symbol), BAR_COLUMNS)  # survives a compaction
        coarse = closed_bars(resample_bars(fine, from_timeframe, timeframe, allow_partial=allow_partial),
                             timeframe, now)
        partial = (coarse.filter(pl.col("fine_bars") < expected)
                   .select("symbol", "ts", from_timeframe=pl.lit(from_timeframe),
                           fine_bars=pl.col("fine_bars").cast(pl.Int64), expected=pl.lit(expected, pl.Int64)))
        return coarse.drop("fine_bars"), partial

    source = f"{exchange} {from_timeframe} bars resampled to {timeframe}"
    try:
        return ingest_symbols(store, chosen, bars_of, exchange=exchange, timeframe=timeframe, source=source)
    except StoreConflictError as exc:
        raise StoreConflictError(
            f"{exc} Resampled bars are derived from the {from_timeframe} bars: a {timeframe} bar stored from an "
            f"incomplete period before partial bars were recorded is refused, not replaced. To rebuild the "
            f"{timeframe} bars, remove {store.series_dir(BarSeries(exchange, timeframe, '-')).parent} "
            f"and resample again.") from None
