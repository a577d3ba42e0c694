"""Every feature of every built-in template against an independent reference: pandas, numpy, TA-Lib or a
plain Python loop, never the project's own code.

Each case is one symbol's bars at one timeframe; every template is bound there with ``builtin_view`` (so
``research_1h`` and ``indicators_4h`` are checked like the default views) and computed with
``compute_symbol``. Row ``i`` is stamped at bar ``i``'s close and uses bars ``0..i``; every reference is
causal and computed over the whole arrays, so the two align by index. Windows count bars: the references
never look at ``ts`` except for the calendar features, which take the row time ``ts + timeframe``.

The references follow the conventions of ``featurestore/builtin_views.py``: EMAs seeded with the first
value (pandas ``ewm(adjust=False)``), Wilder smoothing as an EMA with alpha 1/n, sample standard deviation
(ddof=1) for ``rv`` and ``zscore``, population (ddof=0) for Bollinger, bar 0's true range = high - low,
TA-Lib's 0 for a zero denominator except %B (null). TA-Lib seeds its EMAs with an SMA, so those columns
are compared with TA-Lib only after the seeding difference has decayed (``DECAY``) and, before that, with
the pandas reference; TA-Lib's first value must sit where the module docstring says.

Tolerances. Bit for bit where the reference does the same operations in the same order (``math.log``,
``log1p``, ``sin``, ``cos`` are the C library's, which polars calls too; rolling max/min only select).
Otherwise ``|ours - reference| <= rtol * scale`` with ``rtol`` <= 1e-9 and ``scale`` the magnitude of
what was rounded, stated per feature in ``REFERENCES``: the value itself for positive quantities; the
price for differences of price-level EMAs (MACD), whose rounding is a few ulps of the price whatever the
difference; ``close / ema`` for ``close / ema - 1``; ``close / sd`` for (close - mean) / sd; 100 for the
0..100 oscillators, which can be exactly 0; the largest window for TA-Lib's running SMA. Nulls (warm-up
lengths) must match exactly, and a feature is null or finite, never NaN.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache

import numpy as np
import pandas as pd
import polars as pl
import pytest
import talib
from numpy.lib.stride_tricks import sliding_window_view

from featurestore.bars import TS_DTYPE, validate_bars
from featurestore.builtin_views import BUILTIN_TEMPLATES, BUILTIN_VIEWS, builtin_view
from featurestore.sources.synthetic import synthetic_bars
from featurestore.timeframes import timeframe_ms

# ---------------------------------------------------------------------------------------------------------
# Cases: synthetic series at several timeframes, then the edge cases that break naive kernels.


def _synthetic(symbol: str, timeframe: str, n: int, since: datetime = datetime(2020, 1, 6, tzinfo=UTC)) -> pl.DataFrame:
    bars = synthetic_bars([symbol], timeframe, since=since,
                          until=since + n * timedelta(milliseconds=timeframe_ms(timeframe)))
    assert bars.height == n
    return bars


def _with_prices(bars: pl.DataFrame, price: pl.Expr | Callable[[str], pl.Expr]) -> pl.DataFrame:
    return bars.with_columns(
        (price(name) if callable(price) else price).alias(name) for name in ("open", "high", "low", "close"))


def _constant() -> pl.DataFrame:
    """Every price 5.0: zero ranges, zero returns, zero variance from the first bar."""
    return _with_prices(_synthetic("BNB/USDT", "1m", 1_500), pl.lit(5.0))


def _flat_stretch() -> pl.DataFrame:
    """300 bars at one price after 500 volatile ones: windows that are flat only after big values left them."""
    row = pl.int_range(pl.len())
    return _with_prices(_synthetic("BNB/USDT", "1m", 1_500),
                        lambda name: pl.when(row.is_between(500, 799)).then(310.0).otherwise(pl.col(name)))


def _zero_volume() -> pl.DataFrame:
    row = pl.int_range(pl.len())
    zero = (row % 3 == 0) | row.is_between(600, 699)
    return _synthetic("BNB/USDT", "1m", 1_500).with_columns(volume=pl.when(zero).then(0.0).otherwise("volume"))


def _gap() -> pl.DataFrame:
    """300 hourly bars missing in the middle: windows and lags count stored bars, not hours."""
    bars = _synthetic("SOL/USDT", "1h", 2_000)
    return bars.filter(~pl.int_range(pl.len()).is_between(700, 999))


def _scaled(price: float) -> pl.DataFrame:
    """The same market at another price level, volume scaled the other way (same notional)."""
    bars = _synthetic("BNB/USDT", "1m", 1_500)
    factor = price / bars["close"][0]
    return _with_prices(bars, lambda name: pl.col(name) * factor).with_columns(volume=pl.col("volume") / factor)


def _grid_ties(n: int = 1_200, seed: int = 11) -> pl.DataFrame:
    """Daily bars on a 1e-5 price grid where about a third of the typical prices (h + l + c) / 3 equal the
    previous bar's as decimals, with another split between high, low and close: in floats the two can differ
    by an ulp. Also exact repeats of the close (zero changes)."""
    rng = np.random.default_rng(seed)
    high, low, close = np.empty(n, np.int64), np.empty(n, np.int64), np.empty(n, np.int64)
    level = 100_000  # 1.00000 in ticks of 1e-5
    for i in range(n):
        tie = i > 0 and rng.random() < 0.35
        if tie:  # another split of the same sum of ticks around the same level
            total, level = high[i - 1] + low[i - 1] + close[i - 1], (high[i - 1] + low[i - 1] + close[i - 1]) // 3
        else:
            level += int(rng.integers(-4, 5))
        for _ in range(1_000):
            lo, hi = level - int(rng.integers(1, 25)), level + int(rng.integers(1, 25))
            cl = total - lo - hi if tie else int(rng.integers(lo, hi + 1))
            if lo <= cl <= hi:
                break
        else:
            raise AssertionError("no split found")
        high[i], low[i], close[i] = hi, lo, cl
    open_ = np.clip(np.concatenate([[close[0]], close[:-1]]), low, high)
    start = datetime(2021, 1, 1, tzinfo=UTC)
    return pl.DataFrame({
        "symbol": ["ADA/USDT"] * n,
        "ts": pl.Series([start + timedelta(days=i) for i in range(n)], dtype=TS_DTYPE),
        "open": open_ * 1e-5, "high": high * 1e-5, "low": low * 1e-5, "close": close * 1e-5,
        "volume": rng.lognormal(8.0, 1.0, n),
    })


#: case -> (timeframe every template is bound to, how to build its bars)
CASES: dict[str, tuple[str, Callable[[], pl.DataFrame]]] = {
    "synthetic_1m": ("1m", lambda: _synthetic("XRP/USDT", "1m", 2_000)),  # price ~0.6: tiny MACD values
    "synthetic_1h": ("1h", lambda: _synthetic("BTC/USDT", "1h", 2_000)),  # research_1h
    "synthetic_4h": ("4h", lambda: _synthetic("ETH/USDT", "4h", 1_500)),  # indicators_4h
    "synthetic_1d": ("1d", lambda: _synthetic("SOL/USDT", "1d", 1_200)),  # daily_trend itself
    "synthetic_1w": ("1w", lambda: _synthetic("DOGE/USDT", "1w", 1_000, datetime(2000, 1, 3, tzinfo=UTC))),
    "constant": ("1m", _constant),
    "flat_stretch": ("1m", _flat_stretch),
    "zero_volume": ("1m", _zero_volume),
    "gap": ("1h", _gap),
    "tiny_prices": ("1m", lambda: _scaled(1e-8)),
    "huge_prices": ("1m", lambda: _scaled(1e6)),
    "grid_ties": ("1d", _grid_ties),
}


@dataclass(frozen=True)
class Bars:
    """One case's bars as numpy arrays, for the references."""

    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    row_ms: np.ndarray  # the row time: bar open + timeframe, epoch milliseconds


@cache
def _frame(case: str) -> pl.DataFrame:
    return CASES[case][1]()


@cache
def _bars(case: str) -> Bars:
    frame, step = _frame(case), timeframe_ms(CASES[case][0])
    return Bars(*(frame[name].to_numpy() for name in ("open", "high", "low", "close", "volume")),
                row_ms=frame["ts"].dt.epoch("ms").to_numpy() + step)


@cache
def _ours(case: str, template: str) -> pl.DataFrame:
    rows = builtin_view(template, CASES[case][0]).compute_symbol(_frame(case))
    assert rows.height == _frame(case).height
    return rows


# ---------------------------------------------------------------------------------------------------------
# Reference building blocks: pandas, numpy, TA-Lib and loops; NaN stands for null.


def _shift(x: np.ndarray, n: int) -> np.ndarray:
    return np.concatenate([np.full(n, np.nan), x[:-n]])


def _log_return(b: Bars, n: int) -> np.ndarray:
    out = np.full(len(b.close), np.nan)
    for i in range(n, len(b.close)):
        out[i] = math.log(b.close[i] / b.close[i - n])
    return out


def _ewm(x: np.ndarray, *, span: int | None = None, alpha: float | None = None, min_periods: int) -> np.ndarray:
    """pandas' recursive EWM seeded with the first non-null value; ``min_periods`` counts values, not rows."""
    return pd.Series(x).ewm(span=span, alpha=alpha, adjust=False, min_periods=min_periods).mean().to_numpy()


def _windows(x: np.ndarray, n: int, stat: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``stat`` of each full window of ``n`` values, computed afresh (no running sums); NaN before."""
    out = np.full(len(x), np.nan)
    if len(x) >= n:
        out[n - 1:] = stat(sliding_window_view(x, n))
    return out


def _mean(x: np.ndarray, n: int) -> np.ndarray:
    return _windows(x, n, lambda w: w.mean(axis=1))


def _std(x: np.ndarray, n: int, ddof: int) -> np.ndarray:
    """Two-pass standard deviation of each window: the accurate reference (pandas' running variance leaves
    ~1e-6 in a flat window after volatile ones)."""
    def two_pass(w: np.ndarray) -> np.ndarray:
        return np.sqrt(((w - w.mean(axis=1, keepdims=True)) ** 2).sum(axis=1) / (n - ddof))
    return _windows(x, n, two_pass)


def _ratio_or_zero(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator == 0, 0.0, numerator / denominator)  # NaN operands stay NaN


def _ema(b: Bars, n: int) -> np.ndarray:
    return _ewm(b.close, span=n, min_periods=n)


def _rsi(b: Bars) -> np.ndarray:
    change = pd.Series(b.close).diff()
    gain = _ewm(change.clip(lower=0.0).to_numpy(), alpha=1 / 14, min_periods=14)
    loss = _ewm((-change).clip(lower=0.0).to_numpy(), alpha=1 / 14, min_periods=14)
    return 100.0 * _ratio_or_zero(gain, gain + loss)


def _macd(b: Bars) -> dict[str, np.ndarray]:
    line = _ema(b, 12) - _ema(b, 26)
    signal = _ewm(line, span=9, min_periods=9)
    return {"macd": line, "macd_signal": signal, "macd_hist": line - signal}


def _bollinger(b: Bars) -> dict[str, np.ndarray]:
    mid, sd = _mean(b.close, 20), _std(b.close, 20, ddof=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return {"bb_pctb": np.where(sd == 0, np.nan, (b.close - (mid - 2 * sd)) / (4 * sd)),
                "bb_width": 4 * sd / mid}


def _range_14(b: Bars) -> tuple[np.ndarray, np.ndarray]:
    return (pd.Series(b.high).rolling(14).max().to_numpy(), pd.Series(b.low).rolling(14).min().to_numpy())


def _stochastic(b: Bars) -> dict[str, np.ndarray]:
    highest, lowest = _range_14(b)
    slow_k = _mean(100.0 * _ratio_or_zero(b.close - lowest, highest - lowest), 3)
    return {"stoch_k": slow_k, "stoch_d": _mean(slow_k, 3)}


def _williams_r(b: Bars) -> np.ndarray:
    highest, lowest = _range_14(b)
    return -100.0 * _ratio_or_zero(highest - b.close, highest - lowest)


def _obv(b: Bars) -> np.ndarray:
    """Bar 0 counts as up (its volume starts the line); after that up adds, down subtracts, equal adds 0."""
    out, total = np.empty(len(b.close)), 0.0
    for i, volume in enumerate(b.volume):
        if i == 0 or b.close[i] > b.close[i - 1]:
            total += volume
        elif b.close[i] < b.close[i - 1]:
            total += -volume
        else:
            total += 0.0 * volume
        out[i] = total
    return out


def _zscore(b: Bars) -> np.ndarray:
    """Null where the window is flat (the deviation is 0), as %B."""
    sd = _std(b.close, 20, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(sd == 0, np.nan, (b.close - _mean(b.close, 20)) / sd)


def _calendar(b: Bars) -> dict[str, np.ndarray]:
    """Hour and ISO weekday (Monday = 1) of each row time, and their angles on a 24-hour and 7-day circle."""
    hours, weekdays = [], []
    for ms in b.row_ms:
        moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=int(ms))
        hours.append(float(moment.hour))
        weekdays.append(float(moment.isoweekday()))
    out = {"hour": np.array(hours), "weekday": np.array(weekdays)}
    for name, values, period in (("hour", hours, 24.0), ("weekday", weekdays, 7.0)):
        step = 2.0 * math.pi / period
        out[f"{name}_sin"] = np.array([math.sin(v * step) for v in values])
        out[f"{name}_cos"] = np.array([math.cos(v * step) for v in values])
    return out


def _true_range(b: Bars) -> np.ndarray:
    previous = _shift(b.close, 1)
    with np.errstate(invalid="ignore"):
        ranges = np.fmax(b.high - b.low, np.fmax(np.abs(b.high - previous), np.abs(b.low - previous)))
    return ranges  # fmax ignores the NaN of bar 0: its true range is high - low


def _talib_macd(b: Bars) -> dict[str, np.ndarray]:
    return dict(zip(("macd", "macd_signal", "macd_hist"), talib.MACD(b.close, 12, 26, 9), strict=True))


def _talib_bollinger(b: Bars) -> dict[str, np.ndarray]:
    """TA-Lib's bands with the documented rule: %B is null where the bands meet. (On a flat window after
    volatile bars TA-Lib's deviation is 0 but its running mean is a few ulps off the price: %B = +-inf.)"""
    upper, middle, lower = talib.BBANDS(b.close, 20, 2.0, 2.0, talib.MA_Type.SMA)
    with np.errstate(divide="ignore", invalid="ignore"):
        return {"bb_pctb": np.where(upper == lower, np.nan, (b.close - lower) / (upper - lower)),
                "bb_width": (upper - lower) / middle}


def _talib_stochastic(b: Bars) -> dict[str, np.ndarray]:
    slow_k, slow_d = talib.STOCH(b.high, b.low, b.close, 14, 3, talib.MA_Type.SMA, 3, talib.MA_Type.SMA)
    return {"stoch_k": slow_k, "stoch_d": slow_d}


# ---------------------------------------------------------------------------------------------------------
# The table: (template, feature) -> its references.

Scale = Callable[[Bars, np.ndarray], np.ndarray]


def _of_value(b: Bars, reference: np.ndarray) -> np.ndarray:
    return np.abs(reference)


def _of_ratio(b: Bars, reference: np.ndarray) -> np.ndarray:
    return np.abs(reference + 1.0)  # close / ema - 1 is rounded as close / ema


def _of_price(b: Bars, reference: np.ndarray) -> np.ndarray:
    return np.abs(b.close)


def _of_price_over_sd(b: Bars, reference: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.abs(b.close) / _std(b.close, 20, ddof=0) + np.abs(reference)


def _of_oscillator(b: Bars, reference: np.ndarray) -> np.ndarray:
    return np.full(len(reference), 100.0)


def _of_running_sum(b: Bars, reference: np.ndarray) -> np.ndarray:
    """TA-Lib's SMA keeps one running sum over the whole series (add the new value, subtract the old): its
    rounding is relative to the largest window it has held, not to the current one (which can be 0)."""
    return np.fmax.accumulate(np.abs(reference))


@dataclass(frozen=True)
class Reference:
    """An independent computation of one feature.

    ``rtol`` 0 means bit for bit. A TA-Lib reference whose definition differs on purpose in its first rows
    has ``lead`` (our first value comes that many bars before TA-Lib's) and ``alpha`` (the slowest
    smoothing seeded differently: values are compared once ``(1 - alpha) ** k <= DECAY``).
    """

    source: str
    compute: Callable[[Bars], np.ndarray]
    rtol: float = 0.0
    scale: Scale = _of_value
    lead: int = 0
    alpha: float | None = None

    def start(self, reference: np.ndarray) -> int:
        first = _first(reference)
        return first if self.alpha is None else first + math.ceil(math.log(DECAY) / math.log(1 - self.alpha))


DECAY = 1e-12


def _first(values: np.ndarray) -> int:
    present = np.flatnonzero(~np.isnan(values))
    return int(present[0]) if present.size else len(values)


def _pick(compute: Callable[[Bars], dict[str, np.ndarray]], name: str) -> Callable[[Bars], np.ndarray]:
    return lambda b: compute(b)[name]


# rtol per kind of computation: why it is not 0, and the worst error over all cases (error / scale).
# - Recursive EWMs: pandas computes ((1 - a) m + a x) / ((1 - a) + a), polars m + (x - m) a / ((1 - a) + a):
#   each step rounds differently and the errors decay with (1 - a). Seen 8.9e-15 (atr_14, flat_stretch).
EWM = 1e-12
# - Rolling means and deviations: polars updates running sums, the references sum each window afresh; a
#   running variance loses about eps * (mean / sd)^2 relative, (mean / sd)^2 reaching 1e7 on 1m bars.
#   Seen 1.3e-12 (bb_width on grid_ties).
ROLLING = 1e-10
# - TA-Lib after its documented warm-up: the agreement the module docstring of builtin_views.py states.
#   TA-Lib's Bollinger variance is E[x^2] - E[x]^2 from running sums. Seen 9.8e-11 (bb_width, synthetic_1d).
TALIB = 1e-9

_ALPHA_MACD = 2 / 27  # the slow EMA: the last seeding difference to decay

REFERENCES: dict[tuple[str, str], list[Reference]] = {
    **{("research", f"ret_{n}"): [Reference("loop: math.log(c[i] / c[i-n])", lambda b, n=n: _log_return(b, n))]
       for n in (1, 3, 6, 12)},
    **{("research", f"ema_{n}"): [
        Reference("pandas ewm(span, adjust=False)", lambda b, n=n: _ema(b, n), EWM),
        Reference("TA-Lib EMA", lambda b, n=n: talib.EMA(b.close, n), TALIB, alpha=2 / (n + 1)),
    ] for n in (12, 24, 48)},
    **{("research", f"close_ema_{n}_ratio"): [
        Reference("pandas close / ewm - 1", lambda b, n=n: b.close / _ema(b, n) - 1.0, EWM, _of_ratio),
    ] for n in (12, 24, 48)},
    **{("research", f"rv_{n}"): [
        Reference("numpy two-pass std(ddof=1) of log returns",
                  lambda b, n=n: _std(_log_return(b, 1), n, ddof=1), ROLLING),
    ] for n in (24, 72)},
    ("research", "log_volume"): [Reference("loop: math.log1p(v)", lambda b: np.array([math.log1p(v) for v in b.volume]))],
    ("research", "adv_30"): [
        Reference("pandas rolling(30).mean()", lambda b: pd.Series(b.volume).rolling(30).mean().to_numpy(), ROLLING),
        Reference("TA-Lib SMA", lambda b: talib.SMA(b.volume, 30), TALIB, _of_running_sum),
    ],
    ("indicators", "rsi_14"): [
        Reference("pandas Wilder ewm(alpha=1/14)", _rsi, EWM, _of_oscillator),
        Reference("TA-Lib RSI", lambda b: talib.RSI(b.close, 14), TALIB, _of_oscillator, alpha=1 / 14),
    ],
    **{("indicators", name): [
        Reference("pandas ewm(span) differences", _pick(_macd, name), EWM, _of_price),
        Reference("TA-Lib MACD", _pick(_talib_macd, name), TALIB, _of_price, lead=8 if name == "macd" else 0,
                  alpha=_ALPHA_MACD),
    ] for name in ("macd", "macd_signal", "macd_hist")},
    ("indicators", "bb_pctb"): [
        Reference("numpy two-pass mean, std(ddof=0)", _pick(_bollinger, "bb_pctb"), ROLLING, _of_price_over_sd),
        Reference("TA-Lib BBANDS", _pick(_talib_bollinger, "bb_pctb"), TALIB, _of_price_over_sd),
    ],
    ("indicators", "bb_width"): [
        Reference("numpy two-pass mean, std(ddof=0)", _pick(_bollinger, "bb_width"), ROLLING),
        Reference("TA-Lib BBANDS", _pick(_talib_bollinger, "bb_width"), TALIB),
    ],
    **{("indicators", name): [
        Reference("pandas rolling max/min, numpy window means", _pick(_stochastic, name), ROLLING, _of_oscillator),
        Reference("TA-Lib STOCH", _pick(_talib_stochastic, name), TALIB, _of_oscillator,
                  lead=2 if name == "stoch_k" else 0),
    ] for name in ("stoch_k", "stoch_d")},
    ("indicators", "obv"): [
        Reference("loop: running sum of signed volume", _obv),
        Reference("TA-Lib OBV", lambda b: talib.OBV(b.close, b.volume)),
    ],
    ("indicators", "willr_14"): [
        Reference("pandas rolling max/min", _williams_r),
        Reference("TA-Lib WILLR", lambda b: talib.WILLR(b.high, b.low, b.close, 14), TALIB, _of_oscillator),
    ],
    ("indicators", "zscore_20"): [
        Reference("numpy two-pass mean, std(ddof=1)", _zscore, ROLLING, _of_price_over_sd),
    ],
    **{("indicators", name): [Reference("loop: datetime of ts + timeframe, math.sin/cos", _pick(_calendar, name))]
       for name in ("hour", "weekday", "hour_sin", "hour_cos", "weekday_sin", "weekday_cos")},
    ("daily_trend", "ema_ratio_12"): [
        Reference("pandas close / ewm - 1", lambda b: b.close / _ema(b, 12) - 1.0, EWM, _of_ratio),
    ],
    ("daily_trend", "atr_14"): [
        Reference("pandas Wilder ewm(alpha=1/14) of the true range", lambda b: _ewm(_true_range(b), alpha=1 / 14,
                                                                                   min_periods=14), EWM),
        Reference("TA-Lib ATR", lambda b: talib.ATR(b.high, b.low, b.close, 14), TALIB, lead=1, alpha=1 / 14),
    ],
    ("daily_trend", "log_ret_20d"): [Reference("loop: math.log(c[i] / c[i-20])", lambda b: _log_return(b, 20))],
    ("daily_trend", "mfi_14"): [
        Reference("TA-Lib MFI", lambda b: talib.MFI(b.high, b.low, b.close, b.volume, 14), TALIB, _of_oscillator),
    ],
}

@cache
def _view_name(template: str, timeframe: str) -> str:
    return builtin_view(template, timeframe).name


def _reference_cases():
    for case in CASES:
        for (template, feature), references in REFERENCES.items():
            for reference in references:
                view = _view_name(template, CASES[case][0])
                yield pytest.param(case, template, feature, reference,
                                   id=f"{case}-{view}.{feature}-{reference.source.split(':')[0].split(' ')[0]}")


@cache
def _reference_values(case: str, template: str, feature: str, index: int) -> np.ndarray:
    return REFERENCES[template, feature][index].compute(_bars(case))


@pytest.mark.parametrize(("case", "template", "feature", "reference"), list(_reference_cases()))
def test_feature_equals_its_reference(case, template, feature, reference):
    b = _bars(case)
    ours = _ours(case, template)[feature].fill_null(np.nan).to_numpy()
    with np.errstate(all="ignore"):
        expected = _reference_values(case, template, feature, REFERENCES[template, feature].index(reference))
    assert expected.shape == ours.shape
    first = _first(expected)
    if first < len(expected):
        assert _first(ours) == first - reference.lead, \
            f"first value at row {_first(ours)}, the reference's at {first} (documented lead {reference.lead})"
        assert reference.start(expected) < len(expected) - 100, "too few rows compared: make the case longer"
    else:
        assert _first(ours) == len(ours), f"the reference is null on every row, ours has a value at row {_first(ours)}"
    start = min(reference.start(expected), len(expected))
    got, want = ours[start:], expected[start:]
    null_differs = np.flatnonzero(np.isnan(got) != np.isnan(want))
    assert null_differs.size == 0, f"null in one, not the other, first at row {start + null_differs[0]}"
    present = ~np.isnan(want)
    if reference.rtol == 0.0:
        differs = np.flatnonzero(got[present] != want[present])
        assert differs.size == 0, _first_difference(got[present], want[present], differs, start + np.flatnonzero(present))
        return
    allowed = reference.rtol * reference.scale(b, expected)[start:][present]
    error = np.abs(got[present] - want[present])
    differs = np.flatnonzero(~(error <= allowed))
    assert differs.size == 0, _first_difference(got[present], want[present], differs, start + np.flatnonzero(present))


def _first_difference(got: np.ndarray, want: np.ndarray, differs: np.ndarray, rows: np.ndarray) -> str:
    i = differs[0]
    return f"{differs.size} row(s) differ, first at row {rows[i]}: ours {got[i]!r}, reference {want[i]!r}"


# ---------------------------------------------------------------------------------------------------------
# The table covers every feature, the cases are legal bars, and no feature is NaN.


def test_every_builtin_feature_has_an_independent_reference():
    """A feature added to a built-in template without a reference here fails this test; so does one whose
    only references skip its first rows (each needs one that checks every row, nulls included)."""
    features = {(name, feature) for name, template in BUILTIN_TEMPLATES.items() for feature in template.features}
    assert {(view.name, feature) for view in BUILTIN_VIEWS for feature in view.feature_names} == features
    missing = sorted(features - set(REFERENCES))
    assert not missing, f"no reference for {missing}"
    assert set(REFERENCES) == features, f"references for features that do not exist: {sorted(set(REFERENCES) - features)}"
    partial = sorted(key for key in features if not any(r.lead == 0 and r.alpha is None for r in REFERENCES[key]))
    assert not partial, f"no reference checks every row of {partial}"


@pytest.mark.parametrize("case", list(CASES))
def test_cases_are_legal_bar_series(case):
    validate_bars(_frame(case), CASES[case][0])


@pytest.mark.parametrize(("case", "template", "feature"),
                         [(case, name, feature) for case in CASES for name, template in BUILTIN_TEMPLATES.items()
                          for feature in template.features],
                         ids=lambda value: value)
def test_a_feature_is_null_or_finite(case, template, feature):
    column = _ours(case, template)[feature].drop_nulls()
    assert column.is_finite().all(), f"{(~column.is_finite()).sum()} non-finite values"
