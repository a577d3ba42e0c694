"""A deterministic synthetic crypto market: the embedded default source.

Each symbol's log return is ``r_t = phi * r_{t-1} + mu_t + sigma_t * eps_t`` where
- ``eps_t`` is Student-t with 4 degrees of freedom scaled to unit variance (fat tails);
- ``log sigma_t`` is an AR(1) around the symbol's base volatility with a two-day half-life, times an
  intraday seasonal profile (volatility clustering, busier US hours);
- ``mu_t`` is a slow AR(1) drift with a one-week half-life, and ``phi = 0.04`` (trend persistence);
- traded notional is log-normal and rises with ``|r_t|`` and ``sigma_t`` (volume follows absolute returns).

Bars are open -> close continuous (open = previous close); high/low extend beyond the body by a
half-normal multiple of ``sigma_t``. The series is a function of ``(seed, symbol, timeframe, since)``
only: numbers are drawn in fixed blocks, so a later ``until`` extends the series without changing
its past (a re-run with a later ``until`` appends; nothing stored conflicts).

A ``Regime`` switches the market at a moment: from the bar opening at ``at`` on, ``sigma_t`` is multiplied
by ``volatility`` and ``drift`` (log return per day) is added to ``mu_t``. The same numbers are drawn, so
every bar before ``at`` is the bar without the regime, bit for bit; the bars from ``at`` on differ (store
them with the same regime every time: a different one conflicts with what is stored).

>>> from datetime import datetime, timezone
>>> day = datetime(2024, 1, 1, tzinfo=timezone.utc)
>>> bars = synthetic_bars(["BTC/USDT"], "1h", since=day, until=datetime(2024, 1, 2, tzinfo=timezone.utc))
>>> bars.height, bars["ts"].min() == day
(24, True)
>>> bars.equals(synthetic_bars(["BTC/USDT"], "1h", since=day, until=datetime(2024, 1, 2, tzinfo=timezone.utc)))
True
>>> calm = Regime(datetime(2024, 1, 1, 12, tzinfo=timezone.utc), volatility=3.0, drift=-0.05)
>>> stormy = synthetic_bars(["BTC/USDT"], "1h", since=day, until=datetime(2024, 1, 2, tzinfo=timezone.utc), regime=calm)
>>> stormy.head(12).equals(bars.head(12)), stormy.tail(12)["close"].equals(bars.tail(12)["close"])
(True, False)
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import polars as pl

from featurestore.bars import TS_DTYPE
from featurestore.errors import FeatureStoreError
from featurestore.timeframes import floor_ms, timeframe_ms

__all__ = ["Regime", "synthetic_bars"]

_BLOCK = 1 << 16
_DAY_MS = 86_400_000
_T_DOF = 4.0
_KNOWN_PRICES = {"BTC": 42_000.0, "ETH": 2_300.0, "SOL": 100.0, "BNB": 310.0, "XRP": 0.6, "DOGE": 0.09}


@dataclass(frozen=True)
class Regime:
    """From the bar opening at ``at`` on: volatility times ``volatility``, plus ``drift`` log return per day."""

    at: datetime
    volatility: float = 1.0
    drift: float = 0.0

    def __post_init__(self) -> None:
        if self.at.tzinfo is None:
            raise FeatureStoreError(f"regime at {self.at.isoformat()} has no timezone; pass an aware UTC time")
        if not (math.isfinite(self.volatility) and self.volatility > 0 and math.isfinite(self.drift)):
            raise FeatureStoreError(f"a regime needs volatility > 0 and a finite drift, got volatility "
                                    f"{self.volatility} and drift {self.drift}")


def _symbol_key(symbol: str) -> int:
    return zlib.crc32(symbol.encode())


def _start_price(symbol: str) -> float:
    base = symbol.split("/")[0]
    return _KNOWN_PRICES.get(base, 10.0 ** (1 + _symbol_key(symbol) % 4))


def _ar1(coefficient: float, shocks: np.ndarray, state: float) -> tuple[np.ndarray, float]:
    """x_t = coefficient * x_{t-1} + shock_t, continuing from ``state`` (the previous x)."""
    # imported here, not at the top: scipy.signal takes seconds to import, and every CLI start paid for it
    from scipy.signal import lfilter

    out, _ = lfilter([1.0], [1.0, -coefficient], shocks, zi=[coefficient * state])
    return out, float(out[-1]) if out.size else state


def _blocks(seed: int, symbol: str, timeframe: str, n: int, step_ms: int, start_ms: int,
            regime: Regime | None) -> Iterator[dict]:
    key = _symbol_key(symbol)
    step_days = step_ms / _DAY_MS
    daily_vol = 0.025 + 0.02 * (key % 1000) / 1000  # 2.5% to 4.5% a day, per symbol
    bar_vol = daily_vol * math.sqrt(step_days)
    vol_coef = 0.5 ** (step_days / 2.0)
    drift_coef = 0.5 ** (step_days / 7.0)
    # The drift moves a week's price by about half of a week's noise, whatever the timeframe.
    drift_std = 0.5 * bar_vol / math.sqrt(7.0 / step_days)
    intraday = step_ms < _DAY_MS
    state = {"log_vol": 0.0, "drift": 0.0, "ret": 0.0, "log_close": math.log(_start_price(symbol))}
    for block, first in enumerate(range(0, n, _BLOCK)):
        size = min(_BLOCK, n - first)
        rng = np.random.default_rng([seed, key, zlib.crc32(timeframe.encode()), block])

        def draw(sampler, *args, size=size):
            # always a whole block, then cut: the numbers of bar i never depend on how many bars were asked for
            return sampler(*args, _BLOCK)[:size]

        eps = draw(rng.standard_t, _T_DOF) / math.sqrt(_T_DOF / (_T_DOF - 2.0))
        log_vol, state["log_vol"] = _ar1(vol_coef, draw(rng.standard_normal) * 0.45 * math.sqrt(1 - vol_coef**2),
                                         state["log_vol"])
        drift, state["drift"] = _ar1(drift_coef, draw(rng.standard_normal) * drift_std
                                     * math.sqrt(1 - drift_coef**2), state["drift"])
        ts_ms = start_ms + (first + np.arange(size, dtype=np.int64)) * step_ms
        season = 1.0 + 0.35 * np.cos(2 * np.pi * ((ts_ms % _DAY_MS) / _DAY_MS - 15 / 24)) if intraday else 1.0
        sigma = bar_vol * np.exp(log_vol - 0.45**2 / 2) * season
        if regime is not None:
            switched = ts_ms >= int(regime.at.timestamp() * 1000)
            sigma = np.where(switched, sigma * regime.volatility, sigma)
            drift = drift + np.where(switched, regime.drift * step_days, 0.0)
        ret, state["ret"] = _ar1(0.04, drift + sigma * eps, state["ret"])
        log_close = state["log_close"] + np.cumsum(ret)
        log_open = np.concatenate([[state["log_close"]], log_close[:-1]])
        state["log_close"] = float(log_close[-1])
        wick_up = np.abs(draw(rng.standard_normal)) * sigma * 0.6
        wick_down = np.abs(draw(rng.standard_normal)) * sigma * 0.6
        notional = 5e7 * step_days * np.exp(0.3 * draw(rng.standard_normal) + 0.7 * np.log1p(np.abs(ret) / bar_vol)
                                            + 0.8 * log_vol)
        volume = notional / np.exp(log_close)
        yield {
            "ts": ts_ms,
            "open": np.exp(log_open),
            "high": np.exp(np.maximum(log_open, log_close) + wick_up),
            "low": np.exp(np.minimum(log_open, log_close) - wick_down),
            "close": np.exp(log_close),
            "volume": volume,
        }


def synthetic_bars(symbols: list[str], timeframe: str, *, since: datetime, until: datetime,
                   seed: int = 7, regime: Regime | None = None) -> pl.DataFrame:
    """Closed bars with open time in ``[since, until)`` for each symbol, sorted by ``(symbol, ts)``; the
    market switches to ``regime`` at its time.

    ``until`` must be no later than "now" for the caller: bars are generated as closed bars.
    """
    step_ms = timeframe_ms(timeframe)
    start_ms = floor_ms(int(since.timestamp() * 1000) + step_ms - 1, timeframe)  # first bar at or after since
    n = max(0, (int(until.timestamp() * 1000) - start_ms + step_ms - 1) // step_ms)
    frames = []
    for symbol in symbols:
        for block in _blocks(seed, symbol, timeframe, n, step_ms, start_ms, regime):
            frames.append(pl.DataFrame(block).with_columns(
                pl.lit(symbol).alias("symbol"), pl.from_epoch("ts", time_unit="ms").cast(TS_DTYPE)))
    if not frames:
        return pl.DataFrame(schema={"symbol": pl.String, "ts": TS_DTYPE, **dict.fromkeys(
            ("open", "high", "low", "close", "volume"), pl.Float64)})
    return pl.concat(frames).select("symbol", "ts", "open", "high", "low", "close", "volume")
