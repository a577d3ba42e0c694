"""The built-in indicators agree with TA-Lib (and ``rv`` with pandas) to 1e-9 relative.

Row ``i`` of ``compute_symbol`` is stamped at bar ``i``'s close and uses bars ``0..i``; TA-Lib's
functions are causal, so its output at index ``i`` on the whole series is its value on ``bars[0..i]``:
the two align by index. Values are compared on the second half of a 5,000-bar synthetic series, after
the deliberate seeding differences listed in ``featurestore/builtin_views.py`` have decayed; a separate
test bounds how fast they decay, and another pins where each indicator's first value is.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from functools import cache

import numpy as np
import pandas as pd
import polars as pl
import pytest
import talib
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.lib.stride_tricks import sliding_window_view

from featurestore.bars import TS_DTYPE
from featurestore.builtin_views import DAILY_TREND, INDICATORS, RESEARCH
from featurestore.sources.synthetic import synthetic_bars

N = 5_000
HALF = slice(N // 2, None)
RTOL = 1e-9
EPS = np.finfo(np.float64).eps
# BTC on 1h bars (price ~4e4, large absolute values) and XRP on 1m bars (price ~0.6, tiny MACD values).
SERIES = [("1h", "BTC/USDT"), ("1m", "XRP/USDT")]


@cache
def _data(timeframe: str, symbol: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(bar columns, our features) as numpy arrays, nulls as NaN."""
    since = datetime(2024, 1, 1, tzinfo=UTC)
    step = timedelta(hours=1) if timeframe == "1h" else timedelta(minutes=1)
    bars = synthetic_bars([symbol], timeframe, since=since, until=since + N * step)
    assert bars.height == N
    ours: dict[str, np.ndarray] = {}
    for view in (RESEARCH, INDICATORS, DAILY_TREND):
        rows = view.compute_symbol(bars)
        assert rows.height == N
        ours |= {name: rows[name].fill_null(np.nan).to_numpy() for name in view.feature_names}
    return {name: bars[name].to_numpy() for name in ("open", "high", "low", "close", "volume")}, ours


@cache
def _talib(timeframe: str, symbol: str) -> dict[str, np.ndarray]:
    return _references(_data(timeframe, symbol)[0])


def _references(b: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    h, lo, c, v = (b[name] for name in ("high", "low", "close", "volume"))
    macd, signal, hist = talib.MACD(c, fastperiod=12, slowperiod=26, signalperiod=9)
    upper, middle, lower = talib.BBANDS(c, timeperiod=20, nbdevup=2, nbdevdn=2, matype=talib.MA_Type.SMA)
    slow_k, slow_d = talib.STOCH(h, lo, c, fastk_period=14, slowk_period=3, slowk_matype=talib.MA_Type.SMA,
                                 slowd_period=3, slowd_matype=talib.MA_Type.SMA)
    log_return = pd.Series(np.log(c / np.concatenate([[np.nan], c[:-1]])))
    windows = sliding_window_view(c, 20)
    zscore = np.full(len(c), np.nan)  # two-pass mean and sample std per window: an exact-as-possible reference
    zscore[19:] = (c[19:] - windows.mean(axis=1)) / windows.std(axis=1, ddof=1)
    return {
        "rsi_14": talib.RSI(c, timeperiod=14),
        "macd": macd, "macd_signal": signal, "macd_hist": hist,
        "bb_pctb": (c - lower) / (upper - lower), "bb_width": (upper - lower) / middle,
        "stoch_k": slow_k, "stoch_d": slow_d,
        "obv": talib.OBV(c, v),
        "willr_14": talib.WILLR(h, lo, c, timeperiod=14),
        "ema_12": talib.EMA(c, timeperiod=12), "ema_24": talib.EMA(c, timeperiod=24),
        "ema_48": talib.EMA(c, timeperiod=48),
        "adv_30": talib.SMA(v, timeperiod=30),
        "atr_14": talib.ATR(h, lo, c, timeperiod=14),
        "mfi_14": talib.MFI(h, lo, c, v, timeperiod=14),
        "rv_24": log_return.rolling(24).std().to_numpy(),  # pandas: sample std (ddof=1), like polars' default
        "rv_72": log_return.rolling(72).std().to_numpy(),
        "zscore_20": zscore,
    }


def _atol(feature: str, b: dict[str, np.ndarray]) -> float:
    """Absolute tolerance for values that can sit at or near zero, where a relative test means nothing.

    - macd, macd_signal, macd_hist are differences of price-level EMAs: both libraries round each EMA to
      a few ulps of the price, so the difference carries an absolute error of a few ``eps * price``
      whatever its own size; 16 ulps of the largest close bounds it with room (observed: < 2 ulps).
    - bb_pctb is (close - lower) / (upper - lower), often near 0. TA-Lib's BBANDS takes the standard
      deviation as sqrt(E[x^2] - E[x]^2) from running sums, which cancels catastrophically at price
      level: the band width carries a relative error of ~eps * (price / sd)^2, ~1e-10 for 1m data
      (sd ~ 0.1% of price). %B inherits that as an absolute error (observed: 5e-12).
    - zscore_20 is (close - mean) / sd, near 0 when close is near its mean: the numerator carries an
      absolute error of a few ulps of the price, divided by sd (~1e-3 of price): ~1e-12 (observed 1e-12).
    - the 0..100 oscillators (rsi, stoch, willr, mfi) can be exactly or nearly 0; both libraries form
      the same ratio with differently ordered float operations: 100 * a few ulps of 1 (observed 5e-13).
    """
    if feature.startswith("macd"):
        return 16 * EPS * float(np.max(b["close"]))
    if feature in ("bb_pctb", "zscore_20"):
        return 1e-10
    if feature in ("rsi_14", "stoch_k", "stoch_d", "willr_14", "mfi_14"):
        return 1e-11
    return 0.0  # strictly positive quantities (EMA, SMA, ATR, bandwidth, rv) and OBV (identical additions)


FEATURES = ["rsi_14", "macd", "macd_signal", "macd_hist", "bb_pctb", "bb_width", "stoch_k", "stoch_d", "obv",
            "willr_14", "ema_12", "ema_24", "ema_48", "adv_30", "atr_14", "mfi_14", "rv_24", "rv_72", "zscore_20"]


@pytest.mark.parametrize(("timeframe", "symbol"), SERIES)
@pytest.mark.parametrize("feature", FEATURES)
def test_agrees_with_talib_on_the_second_half(timeframe, symbol, feature):
    bars, ours = _data(timeframe, symbol)
    reference = _talib(timeframe, symbol)[feature]
    assert np.isfinite(reference[HALF]).all() and np.isfinite(ours[feature][HALF]).all()
    np.testing.assert_allclose(ours[feature][HALF], reference[HALF], rtol=RTOL, atol=_atol(feature, bars),
                               err_msg=f"{feature} on {symbol} {timeframe}")


# ---------------------------------------------------------------------------------------------------------
# Where the first value is, and how fast the seeding differences decay.

# TA-Lib's lookback (index of its first value) for each indicator, and ours where it differs on purpose.
FIRST_VALUE = {
    "rsi_14": (14, 14), "ema_12": (11, 11), "ema_24": (23, 23), "ema_48": (47, 47),
    "macd_signal": (33, 33), "macd_hist": (33, 33), "bb_pctb": (19, 19), "bb_width": (19, 19),
    "stoch_d": (17, 17), "obv": (0, 0), "willr_14": (13, 13), "adv_30": (29, 29), "mfi_14": (14, 14),
    # TA-Lib starts the MACD line and slow %K together with their signal/%D lines; ours start as soon as
    # their own windows are full (the slow EMA at 25; %K's 14-bar range at 13, then a 3-bar SMA).
    "macd": (33, 25), "stoch_k": (17, 15),
    # TA-Lib drops bar 0's true range (no previous close); ours takes it as high - low (Wilder).
    "atr_14": (14, 13),
}


@pytest.mark.parametrize("feature", list(FIRST_VALUE))
def test_first_value_index(feature):
    _, ours = _data("1h", "BTC/USDT")
    talib_first, our_first = FIRST_VALUE[feature]
    assert int(np.flatnonzero(~np.isnan(_talib("1h", "BTC/USDT")[feature]))[0]) == talib_first
    assert int(np.flatnonzero(~np.isnan(ours[feature]))[0]) == our_first


# Slowest recursive smoothing behind each feature (alpha), for the features seeded differently from TA-Lib.
SEEDED = {"ema_12": 2 / 13, "ema_24": 2 / 25, "ema_48": 2 / 49, "rsi_14": 1 / 14, "atr_14": 1 / 14,
          "macd": 2 / 27, "macd_signal": 2 / 27, "macd_hist": 2 / 27}
WINDOWED = ["bb_pctb", "bb_width", "stoch_k", "stoch_d", "obv", "willr_14", "adv_30", "mfi_14", "rv_24", "rv_72",
            "zscore_20"]


@pytest.mark.parametrize(("timeframe", "symbol"), SERIES)
@pytest.mark.parametrize("feature", sorted(SEEDED) + WINDOWED)
def test_differences_are_confined_to_the_documented_seeding(timeframe, symbol, feature):
    """Windowed features agree from TA-Lib's first value on. EMA/Wilder features differ only by their seed
    (first value vs TA-Lib's SMA of the first n): the gap shrinks by (1 - alpha) a bar, so it must be below
    1e-12 of the initial gap after log(1e-12) / log(1 - alpha) more bars."""
    bars, ours = _data(timeframe, symbol)
    reference = _talib(timeframe, symbol)[feature]
    start = max(int(np.flatnonzero(~np.isnan(reference))[0]), int(np.flatnonzero(~np.isnan(ours[feature]))[0]))
    if feature in SEEDED:
        start += math.ceil(math.log(1e-12) / math.log(1 - SEEDED[feature]))
    np.testing.assert_allclose(ours[feature][start:], reference[start:], rtol=RTOL, atol=_atol(feature, bars),
                               err_msg=f"{feature} from row {start}")


# ---------------------------------------------------------------------------------------------------------
# Flat markets: the ratio conventions of the module docstring.


def _flat(n: int = 60, volume: float = 0.0) -> pl.DataFrame:
    start = datetime(2024, 1, 1, tzinfo=UTC)
    return pl.DataFrame({
        "symbol": ["BTC/USDT"] * n,
        "ts": pl.Series([start + timedelta(minutes=i) for i in range(n)], dtype=TS_DTYPE),
        **{name: [5.0] * n for name in ("open", "high", "low", "close")},
        "volume": [volume] * n,
    })


@pytest.mark.parametrize("volume", [0.0, 3.0])
def test_flat_market_ratios_are_zero_like_talib(volume):
    flat = _flat(volume=volume)
    f, vol = flat["close"].to_numpy(), flat["volume"].to_numpy()
    ind, daily = INDICATORS.compute_symbol(flat), DAILY_TREND.compute_symbol(flat)
    ours = {"rsi_14": ind["rsi_14"], "stoch_k": ind["stoch_k"], "willr_14": ind["willr_14"], "mfi_14": daily["mfi_14"]}
    talib_values = {"rsi_14": talib.RSI(f, 14), "stoch_k": talib.STOCH(f, f, f, 14, 3, 0, 3, 0)[0],
                    "willr_14": talib.WILLR(f, f, f, 14), "mfi_14": talib.MFI(f, f, f, vol, 14)}
    for name, column in ours.items():
        assert column[-1] == 0.0 == talib_values[name][-1], name
    assert ind["bb_width"][-1] == 0.0
    assert RESEARCH.compute_symbol(flat)["log_volume"].is_finite().all()  # log1p: zero volume stays finite


def test_flat_market_bollinger_pctb_is_null():
    out = INDICATORS.compute_symbol(_flat())
    assert out["bb_pctb"].slice(19).is_null().all(), out["bb_pctb"].slice(19, 3).to_list()


# ---------------------------------------------------------------------------------------------------------
# Prices on a 1e-5 grid (FX quotes): typical prices equal as decimals are ties, as in TA-Lib.


@st.composite
def _grid_bars(draw) -> pl.DataFrame:
    """40-80 bars in ticks of 1e-5 around 0.5-2.0; about half repeat the previous bar's h + l + c with another
    split between high, low and close (equal typical prices as decimals, often an ulp apart as floats); some
    bars have no volume."""
    n = draw(st.integers(40, 80))
    level = draw(st.integers(50_000, 200_000))
    rows, previous_sum = [], None
    for _ in range(n):
        below = draw(st.integers(1, 24))
        if previous_sum is not None and draw(st.booleans()):
            level, rest = divmod(previous_sum, 3)
            above = draw(st.integers(max(1, -(-(rest + below) // 2)), rest + 2 * below))
            close_ticks = previous_sum - (level - below) - (level + above)
        else:
            level += draw(st.integers(-4, 4))
            above = draw(st.integers(1, 24))
            close_ticks = draw(st.integers(level - below, level + above))
        high_ticks, low_ticks = level + above, level - below
        previous_sum = high_ticks + low_ticks + close_ticks
        volume = draw(st.sampled_from([0.0, 1.0, 2.5, 1234.5]))
        rows.append((high_ticks * 1e-5, low_ticks * 1e-5, close_ticks * 1e-5, volume))
    high_, low_, close_, volume_ = (list(column) for column in zip(*rows, strict=True))
    start = datetime(2021, 1, 1, tzinfo=UTC)
    return pl.DataFrame({
        "symbol": ["EUR/USD"] * n, "ts": pl.Series([start + timedelta(days=i) for i in range(n)], dtype=TS_DTYPE),
        "open": close_, "high": high_, "low": low_, "close": close_, "volume": volume_})


@given(bars=_grid_bars())
@settings(max_examples=40, deadline=None)
def test_mfi_counts_decimal_ties_as_talib_does_on_a_price_grid(bars):
    h, lo, c, v = (bars[name].to_numpy() for name in ("high", "low", "close", "volume"))
    ours = DAILY_TREND.compute_symbol(bars)["mfi_14"].fill_null(np.nan).to_numpy()
    reference = talib.MFI(h, lo, c, v, 14)
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(reference))
    np.testing.assert_allclose(ours[14:], reference[14:], rtol=0.0, atol=100 * RTOL)
