"""The feature sets that ship with the project: ``research``, ``indicators`` and ``daily_trend``.

Each set is a template (``BUILTIN_TEMPLATES``) that ``builtin_view(name, timeframe)`` binds to the bars of
one timeframe. Bound at its default timeframe (``research`` and ``indicators`` at 1m, ``daily_trend`` at
1d) a template gives the view of that name, ``RESEARCH``, ``INDICATORS`` or ``DAILY_TREND``, with the
version its stored data carries. Bound at another timeframe it gives ``<template>_<timeframe>``
(``research_1h``, ``indicators_4h``, ``daily_trend_1w``) with a version of its own.

- Windows, lags and warm-ups count bars of the bound timeframe, never clock time: ``rv_24`` is the
  volatility of the last 24 bars (24 minutes at 1m, a day at 1h, four days at 4h) and is null for the
  first 24 rows. Feature names keep their numbers whatever the timeframe: ``log_ret_20d`` of
  ``daily_trend_1w`` is a 20-week return.
- The calendar features (``hour``, ``weekday`` and their sin/cos) are those of the row time, the bar's
  close. They are kept as they are at every timeframe: on bars of a day or longer ``hour`` is always 0
  (``hour_sin`` 0, ``hour_cos`` 1), and on weekly bars ``weekday`` is always 1 (Monday).

Conventions (differences from TA-Lib are deliberate; values agree to 1e-9 relative once the seeding
difference has decayed, which takes 5-10 windows: e.g. ema_48 from bar ~313, RSI ~276, MACD ~328):
- EMAs are ``ewm_mean(span=n, adjust=False, min_samples=n)``: the recursive EMA seeded with the first
  value; TA-Lib seeds with the mean of the first ``n`` values. The gap shrinks by ``1 - alpha`` a bar.
- Wilder smoothing (RSI, ATR) is ``ewm_mean(alpha=1/n, adjust=False, min_samples=n)``, same caveat.
- Each line starts as soon as its own window is full: the MACD line at bar 25 (TA-Lib: 33, aligned
  with its signal), %K at 15 (TA-Lib: 17, aligned with %D), ATR at 13 (TA-Lib: 14; bar 0's true range
  is taken as high - low).
- Where a ratio's denominator is zero (flat market), RSI, MFI, %K and Williams %R follow TA-Lib and
  give 0; Bollinger %B and the z-score give null.
- MFI counts ties as TA-Lib does: a typical price within 1e-14 relative of the previous one did not move
  (``money_flow_index``). The other comparisons compare stored prices (a close with the previous close, a
  close with the window's high and low) or a deviation polars computes exactly 0 on a flat window, so a
  decimal tie is an exact tie there.
- ``log_volume`` is ``log1p(volume)``: zero-volume bars are legal and stay finite.

>>> sorted(view.name for view in BUILTIN_VIEWS)
['daily_trend', 'indicators', 'research']
>>> len(RESEARCH.features)
14
>>> {name: template.timeframe for name, template in BUILTIN_TEMPLATES.items()}
{'research': '1m', 'indicators': '1m', 'daily_trend': '1d'}
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import polars as pl

from featurestore.definitions import FeatureView
from featurestore.errors import DefinitionError, FeatureStoreError
from featurestore.timeframes import timeframe_ms

__all__ = ["BUILTIN_TEMPLATES", "BUILTIN_VIEWS", "DAILY_TREND", "INDICATORS", "RESEARCH", "ViewTemplate",
           "builtin_view"]

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
    """TA-Lib's MFI, ties and empty windows included.

    A typical price ``(h + l + c) / 3`` that moved by no more than 1e-14 of the two prices' magnitudes (TA-Lib's
    dead zone, about 90 ulps) did not move: two bars whose prices sum to the same decimal can differ by an ulp
    in floats, and neither direction gets their flow. A direction without any flow in the window sums to 0,
    not to the running sum's rounding residue, so a window without any flow gives 0 as TA-Lib does.
    """
    typical = (high + low + close) / 3.0
    previous = typical.shift(1)
    change = typical - previous
    tie = change.abs() <= 1e-14 * (typical.abs() + previous.abs())
    flow = typical * volume

    def directed(up: bool) -> pl.Expr:
        # null for the first bar (no direction yet), so the window holds `period` price changes
        moved = change > 0.0 if up else change < 0.0
        flows = pl.when(previous.is_null()).then(None).when(tie).then(0.0).when(moved).then(flow).otherwise(0.0)
        return pl.when(flows.sign().rolling_sum(period) == 0.0).then(0.0).otherwise(flows.rolling_sum(period))

    positive, negative = directed(True), directed(False)
    return 100.0 * ratio_or_zero(positive, positive + negative)


def _cyclic(value: pl.Expr, period: float, name: str) -> dict[str, pl.Expr]:
    angle = value.cast(pl.Float64) * (2.0 * math.pi / period)
    return {f"{name}_sin": angle.sin(), f"{name}_cos": angle.cos()}


@dataclass(frozen=True)
class ViewTemplate:
    """A built-in feature set before it is bound to a timeframe: what ``builtin_view`` binds."""

    name: str
    timeframe: str  # the default: bound here, the view is called ``name``
    features: Mapping[str, pl.Expr]
    description: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "features", MappingProxyType(dict(self.features)))


_ret_1 = log_return(1)
_RESEARCH = ViewTemplate(
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
_zscore_sd = close.rolling_std(20)
_hour = pl.col("close_ts").dt.hour()
_weekday = pl.col("close_ts").dt.weekday()
_INDICATORS = ViewTemplate(
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
        "zscore_20": pl.when(_zscore_sd == 0.0).then(None).otherwise((close - close.rolling_mean(20)) / _zscore_sd),
        "hour": _hour.cast(pl.Float64),
        "weekday": _weekday.cast(pl.Float64),
        **_cyclic(_hour, 24.0, "hour"),
        **_cyclic(_weekday, 7.0, "weekday"),
    },
    description="Standard technical indicators (TA-Lib definitions) and calendar encodings of the row time.",
)

_DAILY_TREND = ViewTemplate(
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

#: The built-in feature sets by name, each with its default timeframe.
BUILTIN_TEMPLATES: Mapping[str, ViewTemplate] = MappingProxyType(
    {template.name: template for template in (_RESEARCH, _INDICATORS, _DAILY_TREND)})


def builtin_view(name: str, timeframe: str) -> FeatureView:
    """The built-in template ``name`` bound to bars of ``timeframe`` (ccxt notation: ``1m``, ``4h``, ``1w``).

    At the template's default timeframe this is the built-in view itself (same name, same version); at any
    other it is ``<name>_<timeframe>``. Windows count bars of ``timeframe`` (module docstring).

    >>> hourly = builtin_view("research", "1h")
    >>> hourly.name, hourly.timeframe, hourly.feature_names == RESEARCH.feature_names
    ('research_1h', '1h', True)
    >>> builtin_view("research", "1m").version == RESEARCH.version != hourly.version
    True

    ``rv_24`` needs 24 hourly returns: its first value is on the row of the 25th bar, a day after the first.

    >>> from datetime import datetime, timezone
    >>> from featurestore.sources.synthetic import synthetic_bars
    >>> day = datetime(2024, 1, 1, tzinfo=timezone.utc)
    >>> bars = synthetic_bars(["BTC/USDT"], "1h", since=day, until=datetime(2024, 1, 3, tzinfo=timezone.utc))
    >>> rows = hourly.compute_symbol(bars).drop_nulls("rv_24")
    >>> rows["ts"][0], rows.height
    (datetime.datetime(2024, 1, 2, 1, 0, tzinfo=zoneinfo.ZoneInfo(key='UTC')), 24)

    >>> builtin_view("reserch", "1h")
    Traceback (most recent call last):
    ...
    featurestore.errors.DefinitionError: unknown built-in template 'reserch'; did you mean 'research'? (available: daily_trend, indicators, research)
    >>> builtin_view("indicators", "4H")
    Traceback (most recent call last):
    ...
    featurestore.errors.DefinitionError: built-in template 'indicators': unknown timeframe '4H': use a count and a unit m, h, d or w, e.g. '1m', '4h', '1d', '1w'; did you mean '4h'?
    """
    template = BUILTIN_TEMPLATES.get(name)
    if template is None:
        guess = difflib.get_close_matches(str(name).lower(), BUILTIN_TEMPLATES, n=1)
        hint = f"; did you mean {guess[0]!r}?" if guess else ""
        raise DefinitionError(f"unknown built-in template {name!r}{hint} (available: {', '.join(sorted(BUILTIN_TEMPLATES))})")
    try:
        timeframe_ms(timeframe)
    except FeatureStoreError as exc:
        raise DefinitionError(f"built-in template {name!r}: {exc}") from None
    bound = name if timeframe == template.timeframe else f"{name}_{timeframe}"
    return FeatureView(bound, timeframe, template.features, description=template.description)


RESEARCH = builtin_view("research", "1m")
INDICATORS = builtin_view("indicators", "1m")
DAILY_TREND = builtin_view("daily_trend", "1d")
BUILTIN_VIEWS = (RESEARCH, INDICATORS, DAILY_TREND)
