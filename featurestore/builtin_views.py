"""The feature views that ship with the project: ``research``, ``indicators`` and ``daily_trend``.

Conventions (differences from TA-Lib are deliberate; values agree to 1e-9 relative once the seeding
difference has decayed, which takes 5-10 windows: e.g. ema_48 from bar ~313, RSI ~276, MACD ~328):
- EMAs are ``ewm_mean(span=n, adjust=False, min_samples=n)``: the recursive EMA seeded with the first
  value; TA-Lib seeds with the mean of the first ``n`` values. The gap shrinks by ``1 - alpha`` a bar.
- Wilder smoothing (RSI, ATR) is ``ewm_mean(alpha=1/n, adjust=False, min_samples=n)``, same caveat.
- Each line starts as soon as its own window is full: the MACD line at bar 25 (TA-Lib: 33, aligned
  with its signal), %K at 15 (TA-Lib: 17, aligned with %D), ATR at 13 (TA-Lib: 14; bar 0's true range
  is taken as high - low).
- Where a ratio's denominator is zero (flat market), RSI, MFI, %K and Williams %R follow TA-Lib and
  give 0; Bollinger %B gives null.
- ``log_volume`` is ``log1p(volume)``: zero-volume bars are legal and stay finite.

>>> sorted(view.name for view in BUILTIN_VIEWS)
['daily_trend', 'indicators', 'research']
>>> len(RESEARCH.features)
14
"""

from __future__ import annotations

import math

import polars as pl

from featurestore.definitions import FeatureView

__all__ = ["BUILTIN_VIEWS", "DAILY_TREND", "INDICATORS", "RESEARCH"]

close, high, low, volume = pl.col("close"), pl.col("high"), pl.col("low"), pl.col("volume")


def ema(x: pl.Expr, span: int) -> pl.Expr:
    """Recursive EMA with ``alpha = 2 / (span + 1)``, null until ``span`` values are seen."""
    return x.ewm_mean(span=span, adjust=False, min_samples=span)


def wilder(x: pl.Expr, period: int) -> pl.Expr:
    """Wilder's smoothing: an EMA with ``alpha = 1 / period``."""
    return x.ewm_mean(alpha=1.0 / period, adjust=False, min_samples=period)


def log_return(periods: int) -> pl.Expr:
    return (close / close.shift(periods)).log()


def ratio_or_zero(numerator: pl.Expr, denominator: pl.Expr) -> pl.Expr:
    """``numerator / denominator``, 0 where the denominator is 0 (TA-Lib's convention)."""
    return pl.when(denominator == 0).then(0.0).otherwise(numerator / denominator)


def true_range() -> pl.Expr:
    previous_close = close.shift(1)
    return pl.max_horizontal(high - low, (high - previous_close).abs(), (low - previous_close).abs())


def rsi(period: int) -> pl.Expr:
    change = close.diff()
    gain = wilder(change.clip(lower_bound=0.0), period)
    loss = wilder((-change).clip(lower_bound=0.0), period)
    return 100.0 * ratio_or_zero(gain, gain + loss)


def money_flow_index(period: int) -> pl.Expr:
    typical = (high + low + close) / 3.0
    previous = typical.shift(1)
    flow = typical * volume

    def directed(up: bool) -> pl.Expr:
        # null for the first bar (no direction yet), so the window holds `period` price changes
        moved = typical > previous if up else typical < previous
        return pl.when(previous.is_null()).then(None).when(moved).then(flow).otherwise(0.0).rolling_sum(period)

    positive, negative = directed(True), directed(False)
    return 100.0 * ratio_or_zero(positive, positive + negative)


def _cyclic(value: pl.Expr, period: float, name: str) -> dict[str, pl.Expr]:
    angle = value.cast(pl.Float64) * (2.0 * math.pi / period)
    return {f"{name}_sin": angle.sin(), f"{name}_cos": angle.cos()}


_ret_1 = log_return(1)
RESEARCH = FeatureView(
    "research",
    "1m",
    {
        **{f"ret_{n}": log_return(n) for n in (1, 3, 6, 12)},
        **{f"ema_{n}": ema(close, n) for n in (12, 24, 48)},
        **{f"close_ema_{n}_ratio": close / ema(close, n) - 1.0 for n in (12, 24, 48)},
        "rv_24": _ret_1.rolling_std(24),
        "rv_72": _ret_1.rolling_std(72),
        "log_volume": volume.log1p(),
        "adv_30": volume.rolling_mean(30),
    },
    description="Momentum, trend, volatility and liquidity features for short-horizon return models.",
)

_macd = ema(close, 12) - ema(close, 26)
_macd_signal = _macd.ewm_mean(span=9, adjust=False, min_samples=9)
_bb_mid = close.rolling_mean(20)
_bb_sd = close.rolling_std(20, ddof=0)
_highest, _lowest = high.rolling_max(14), low.rolling_min(14)
_fast_k = 100.0 * ratio_or_zero(close - _lowest, _highest - _lowest)
_stoch_k = _fast_k.rolling_mean(3)
_hour = pl.col("close_ts").dt.hour()
_weekday = pl.col("close_ts").dt.weekday()
INDICATORS = FeatureView(
    "indicators",
    "1m",
    {
        "rsi_14": rsi(14),
        "macd": _macd,
        "macd_signal": _macd_signal,
        "macd_hist": _macd - _macd_signal,
        "bb_pctb": pl.when(_bb_sd == 0.0).then(None).otherwise((close - (_bb_mid - 2.0 * _bb_sd)) / (4.0 * _bb_sd)),
        "bb_width": 4.0 * _bb_sd / _bb_mid,
        "stoch_k": _stoch_k,
        "stoch_d": _stoch_k.rolling_mean(3),
        "obv": (close.diff().sign().fill_null(1.0) * volume).cum_sum(),
        "willr_14": -100.0 * ratio_or_zero(_highest - close, _highest - _lowest),
        "zscore_20": (close - close.rolling_mean(20)) / close.rolling_std(20),
        "hour": _hour.cast(pl.Float64),
        "weekday": _weekday.cast(pl.Float64),
        **_cyclic(_hour, 24.0, "hour"),
        **_cyclic(_weekday, 7.0, "weekday"),
    },
    description="Standard technical indicators (TA-Lib definitions) and calendar encodings of the row time.",
)

DAILY_TREND = FeatureView(
    "daily_trend",
    "1d",
    {
        "ema_ratio_12": close / ema(close, 12) - 1.0,
        "atr_14": wilder(true_range(), 14),
        "log_ret_20d": log_return(20),
        "mfi_14": money_flow_index(14),
    },
    description="Daily trend and volatility context, joined as-of onto intraday rows.",
)

BUILTIN_VIEWS = (RESEARCH, INDICATORS, DAILY_TREND)
