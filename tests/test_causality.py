"""Causality of every built-in feature: the feature row stamped ``t`` uses only bars that opened before ``t``.

The property (``docs/semantics.md``): change or append any bar at position >= k, and every
feature row stamped at or before ``bars[k].ts`` (i.e. produced by bars 0..k-1) stays bit for bit the
same, nulls included. Checked for ``compute`` on multi-symbol frames and ``compute_symbol`` on one
symbol, over generated series with the edge cases that break naive kernels (constant prices, zero
volume, 1e9 and 1e-8 magnitudes, gaps), then the stamping and warm-up rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from featurestore.bars import TS_DTYPE, validate_bars
from featurestore.builtin_views import BUILTIN_VIEWS, DAILY_TREND, INDICATORS, RESEARCH
from featurestore.definitions import FeatureView
from featurestore.timeframes import timeframe_ms

VIEWS = {view.name: view for view in BUILTIN_VIEWS}
# Starts that cross midnight, a weekend, a month end and a year end, so the calendar features move.
START = {"1m": datetime(2024, 12, 31, 23, 0, tzinfo=UTC), "1d": datetime(2023, 11, 3, tzinfo=UTC)}

# ---------------------------------------------------------------------------------------------------------
# Generated bar series


@dataclass(frozen=True)
class Shape:
    """How to draw one symbol's bars; the values come from numpy seeded by ``seed``."""

    n: int
    seed: int
    kind: str  # walk | constant | flat_segments | jumpy
    price: float  # price level
    volume: float  # volume level (0: every bar has zero volume)
    sigma: float  # per-bar log-return volatility
    gaps: bool  # missing bars between some consecutive ts


def _values(shape: Shape, rng: np.random.Generator, n: int, first_open: float | None = None) -> dict[str, np.ndarray]:
    if shape.kind == "constant":
        returns = np.zeros(n)
    else:
        returns = rng.normal(0.0, shape.sigma, n)
        if shape.kind == "flat_segments":
            returns[rng.random(n) < 0.5] = 0.0
        if shape.kind == "jumpy":
            returns += np.where(rng.random(n) < 0.02, rng.normal(0.0, 0.5, n), 0.0)
    start = shape.price if first_open is None else first_open
    close = start * np.exp(np.cumsum(returns))
    open_ = np.concatenate([[start], close[:-1]])[:n]
    body_high, body_low = np.maximum(open_, close), np.minimum(open_, close)
    if shape.kind == "constant":
        high, low = body_high, body_low
    else:
        wick = np.abs(rng.normal(0.0, shape.sigma, (2, n))) * (rng.random((2, n)) < 0.8)
        high, low = body_high * np.exp(wick[0]), body_low * np.exp(-wick[1])
    volume = shape.volume * rng.lognormal(0.0, 1.0, n) * (rng.random(n) < 0.9)
    return {"open": open_, "high": np.maximum(high, body_high), "low": np.minimum(low, body_low), "close": close,
            "volume": volume}


def _steps(shape: Shape, rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(1, 4, n) * (rng.random(n) < 0.1) + 1 if shape.gaps else np.ones(n, dtype=np.int64)


def _frame(symbol: str, timeframe: str, ts_steps: np.ndarray, values: dict[str, np.ndarray]) -> pl.DataFrame:
    step = timeframe_ms(timeframe)
    start_ms = int(START[timeframe].timestamp() * 1000)
    ts_ms = start_ms + np.cumsum(ts_steps) * step
    return pl.DataFrame({
        "symbol": pl.Series([symbol] * len(ts_ms), dtype=pl.String),
        "ts": pl.Series(ts_ms, dtype=pl.Int64).cast(pl.Datetime("ms")).dt.replace_time_zone("UTC").cast(TS_DTYPE),
        **{name: pl.Series(name, column, dtype=pl.Float64) for name, column in values.items()},
    })


shapes = st.builds(
    Shape,
    n=st.one_of(st.integers(1, 120), st.integers(120, 3000)),
    seed=st.integers(0, 2**32 - 1),
    kind=st.sampled_from(["walk", "constant", "flat_segments", "jumpy"]),
    price=st.sampled_from([1e-8, 0.6, 100.0, 42_000.0, 1e9]),
    volume=st.sampled_from([0.0, 1e-8, 1.0, 5e4, 1e9]),
    sigma=st.sampled_from([1e-6, 1e-3, 0.02, 0.2]),
    gaps=st.booleans(),
)


@dataclass(frozen=True)
class Change:
    """What happens to a symbol's bars from position ``k`` on (``k`` is a fraction of its length)."""

    at: float
    mode: str  # perturb | append | truncate | perturb_append | retime | none
    seed: int
    scale: float  # new values are drawn around price * scale
    extra: int  # bars appended


changes = st.builds(
    Change,
    at=st.one_of(st.floats(0.0, 1.0), st.sampled_from([0.0, 1.0])),
    mode=st.sampled_from(["perturb", "append", "truncate", "perturb_append", "retime", "none"]),
    seed=st.integers(0, 2**32 - 1),
    scale=st.sampled_from([1e-6, 1.0, 1.0001, 1e6]),
    extra=st.integers(1, 300),
)


def _series(symbol: str, timeframe: str, shape: Shape, change: Change) -> tuple[pl.DataFrame, pl.DataFrame, int]:
    """(original bars, changed bars, k): both share bars[:k] exactly; everything from k on may differ."""
    rng = np.random.default_rng(shape.seed)
    steps = _steps(shape, rng, shape.n)
    original = _frame(symbol, timeframe, steps, _values(shape, rng, shape.n))
    k = min(shape.n, round(change.at * shape.n))
    if change.mode == "none":
        return original, original, k
    rng2 = np.random.default_rng(change.seed)
    tail_n = shape.n - k
    head_steps = steps[:k]
    last_close = original["close"][k - 1] if k else shape.price
    new_shape = Shape(tail_n, change.seed, shape.kind, shape.price * change.scale, shape.volume * change.scale,
                      shape.sigma, shape.gaps)
    tail_steps, tail_values = steps[k:], {name: original[name].to_numpy()[k:] for name in _VALUE_COLUMNS}
    if change.mode in ("perturb", "perturb_append"):
        tail_values = _values(new_shape, rng2, tail_n, first_open=last_close * change.scale)
    elif change.mode == "truncate":
        tail_steps, tail_values = tail_steps[:0], {name: col[:0] for name, col in tail_values.items()}
    elif change.mode == "retime":
        tail_steps = tail_steps + rng2.integers(0, 3, tail_n) if tail_n else tail_steps
        if tail_n:
            tail_steps[0] += 1  # at least one bar moves
    if change.mode in ("append", "perturb_append"):
        extra_open = tail_values["close"][-1] if len(tail_values["close"]) else last_close
        extra = _values(new_shape, rng2, change.extra, first_open=extra_open)
        tail_steps = np.concatenate([tail_steps, _steps(shape, rng2, change.extra)])
        tail_values = {name: np.concatenate([tail_values[name], extra[name]]) for name in _VALUE_COLUMNS}
    changed_values = {name: np.concatenate([original[name].to_numpy()[:k], tail_values[name]]) for name in _VALUE_COLUMNS}
    changed = _frame(symbol, timeframe, np.concatenate([head_steps, tail_steps]), changed_values)
    return original, changed, k


_VALUE_COLUMNS = ("open", "high", "low", "close", "volume")


def _cut(original: pl.DataFrame, changed: pl.DataFrame, k: int) -> datetime | None:
    """``bars[k].ts``: the earliest open time from which the two series may differ (None: they never do)."""
    candidates = [frame["ts"][k] for frame in (original, changed) if frame.height > k]
    return min(candidates) if candidates else None


def _rows_before(rows: pl.DataFrame, cut: datetime | None) -> pl.DataFrame:
    return rows if cut is None else rows.filter(pl.col("ts") <= cut)


def assert_bitwise_equal(left: pl.DataFrame, right: pl.DataFrame, *, context: str = "") -> None:
    """Same columns, dtypes, keys, null positions and float bit patterns (NaN and -0.0 included)."""
    assert left.schema == right.schema, context
    assert left.height == right.height, f"{context}: {left.height} rows vs {right.height}"
    assert left.select("symbol", "ts").equals(right.select("symbol", "ts")), context
    for name, dtype in left.schema.items():
        if dtype != pl.Float64:
            continue
        a, b = left[name], right[name]
        nulls = a.is_null().to_numpy() != b.is_null().to_numpy()
        bits = a.fill_null(0.0).to_numpy().view(np.uint64) != b.fill_null(0.0).to_numpy().view(np.uint64)
        bad = np.flatnonzero(nulls | bits)
        assert bad.size == 0, (f"{context}: feature {name!r} differs at row {bad[0]} (ts {left['ts'][int(bad[0])]}): "
                               f"{a[int(bad[0])]!r} vs {b[int(bad[0])]!r} ({bad.size} rows differ)")
    assert left.equals(right, null_equal=True), context  # polars' own equality agrees (NaN == NaN)


# ---------------------------------------------------------------------------------------------------------
# The property


@pytest.mark.parametrize("view_name", sorted(VIEWS))
@settings(max_examples=35, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_changing_or_appending_future_bars_never_changes_past_rows(view_name, data):
    view = VIEWS[view_name]
    symbols = data.draw(st.lists(st.sampled_from(["BTC/USDT", "ETH/USDT", "XRP/USDT:USDT"]), min_size=1, max_size=3,
                                 unique=True).map(sorted), label="symbols")
    originals, changeds, cuts = [], [], {}
    for symbol in symbols:
        shape = data.draw(shapes, label=f"shape {symbol}")
        change = data.draw(changes, label=f"change {symbol}")
        original, changed, k = _series(symbol, view.timeframe, shape, change)
        validate_bars(original, view.timeframe)  # the generator makes legal bars only
        validate_bars(changed, view.timeframe)
        assert original.head(k).equals(changed.head(k))
        originals.append(original)
        changeds.append(changed)
        cuts[symbol] = (_cut(original, changed, k), k)

    # One symbol at a time, as backfill computes.
    for symbol, original, changed in zip(symbols, originals, changeds, strict=True):
        cut, k = cuts[symbol]
        before = _rows_before(view.compute_symbol(original), cut)
        after = _rows_before(view.compute_symbol(changed), cut)
        assert before.height == k, f"{symbol}: {before.height} rows stamped <= {cut}, expected {k}"
        assert_bitwise_equal(before, after, context=f"compute_symbol {view.name} {symbol} k={k}")

    # All symbols in one frame (partitioned with .over): each symbol's past is untouched by any future.
    full_before = view.compute(pl.concat(originals))
    full_after = view.compute(pl.concat(changeds))
    for symbol, original in zip(symbols, originals, strict=True):
        cut, k = cuts[symbol]
        before = _rows_before(full_before.filter(pl.col("symbol") == symbol), cut)
        after = _rows_before(full_after.filter(pl.col("symbol") == symbol), cut)
        assert before.height == k
        assert_bitwise_equal(before, after, context=f"compute {view.name} {symbol} k={k}")
        # and the partitioned computation equals the single-symbol one, bit for bit
        assert_bitwise_equal(full_before.filter(pl.col("symbol") == symbol), view.compute_symbol(original),
                             context=f"compute vs compute_symbol {view.name} {symbol}")


EDGE_SHAPES = {
    "constant": Shape(400, 1, "constant", 42_000.0, 10.0, 0.0, False),
    "constant_zero_volume": Shape(400, 2, "constant", 1.0, 0.0, 0.0, False),
    "huge": Shape(400, 3, "walk", 1e9, 1e9, 0.02, True),
    "tiny": Shape(400, 4, "walk", 1e-8, 1e-8, 0.02, False),
    "flat_segments": Shape(400, 5, "flat_segments", 0.6, 5e4, 1e-3, True),
    "near_constant": Shape(400, 6, "walk", 42_000.0, 1.0, 1e-9, False),
}


@pytest.mark.parametrize("view_name", sorted(VIEWS))
@pytest.mark.parametrize("shape_name", sorted(EDGE_SHAPES))
@pytest.mark.parametrize("k", [1, 13, 14, 20, 26, 34, 73, 399])
def test_edge_series_at_warm_up_boundaries(view_name, shape_name, k):
    view = VIEWS[view_name]
    shape = EDGE_SHAPES[shape_name]
    for mode in ("perturb_append", "truncate"):
        change = Change(at=k / shape.n, mode=mode, seed=k, scale=1e3, extra=50)
        original, changed, cut_k = _series("BTC/USDT", view.timeframe, shape, change)
        assert cut_k == k
        cut = _cut(original, changed, k)
        before = _rows_before(view.compute_symbol(original), cut)
        assert before.height == k
        assert_bitwise_equal(before, _rows_before(view.compute_symbol(changed), cut),
                             context=f"{view.name} {shape_name} {mode} k={k}")


# ---------------------------------------------------------------------------------------------------------
# Stamping and warm-up


def _walk(timeframe: str, n: int = 600, symbol: str = "BTC/USDT", gaps: bool = True) -> pl.DataFrame:
    shape = Shape(n, 11, "walk", 42_000.0, 50.0, 0.01, gaps)
    rng = np.random.default_rng(shape.seed)
    steps = _steps(shape, rng, n)
    return _frame(symbol, timeframe, steps, _values(shape, rng, n))


@pytest.mark.parametrize("view_name", sorted(VIEWS))
def test_rows_are_stamped_at_the_bar_close_one_per_bar(view_name):
    view = VIEWS[view_name]
    bars = pl.concat([_walk(view.timeframe, 300, "A/USDT"), _walk(view.timeframe, 200, "B/USDT")])
    step = timedelta(milliseconds=timeframe_ms(view.timeframe))
    for out in (view.compute(bars), view.compute(bars.lazy()), pl.concat(
            [view.compute_symbol(bars.filter(pl.col("symbol") == s)) for s in ("A/USDT", "B/USDT")])):
        assert out.columns == ["symbol", "ts", *view.feature_names]
        assert out.schema["ts"] == TS_DTYPE
        assert all(out.schema[name] == pl.Float64 for name in view.feature_names)
        assert out.height == bars.height
        assert out["symbol"].equals(bars["symbol"])
        assert (out["ts"] - bars["ts"]).unique().to_list() == [step]


def test_calendar_features_describe_the_row_time_not_the_bar_open():
    bars = _walk("1m", 3, gaps=False)  # opens 23:01, 23:02, 23:03 on 2024-12-31 (a Tuesday)
    out = INDICATORS.compute_symbol(bars)
    assert out["hour"].to_list() == [23.0, 23.0, 23.0]
    late = _frame("BTC/USDT", "1m", np.array([59, 1]), {name: np.ones(2) for name in _VALUE_COLUMNS})
    out = INDICATORS.compute_symbol(late)  # bar opening 23:59 closes at 00:00 on Wednesday 2025-01-01
    assert out["ts"][0] == datetime(2025, 1, 1, tzinfo=UTC)
    assert out["hour"][0] == 0.0 and out["weekday"][0] == 3.0


# Leading nulls of each built-in feature on a series with no flat bars: exactly the window's warm-up.
WARM_UP = {
    RESEARCH.name: {"ret_1": 1, "ret_3": 3, "ret_6": 6, "ret_12": 12, "ema_12": 11, "ema_24": 23, "ema_48": 47,
                    "close_ema_12_ratio": 11, "close_ema_24_ratio": 23, "close_ema_48_ratio": 47,
                    "rv_24": 24, "rv_72": 72, "log_volume": 0, "adv_30": 29},
    INDICATORS.name: {"rsi_14": 14, "macd": 25, "macd_signal": 25 + 8, "macd_hist": 33, "bb_pctb": 19,
                      "bb_width": 19, "stoch_k": 13 + 2, "stoch_d": 13 + 4, "obv": 0, "willr_14": 13,
                      "zscore_20": 19, "hour": 0, "weekday": 0, "hour_sin": 0, "hour_cos": 0, "weekday_sin": 0,
                      "weekday_cos": 0},
    # atr_14: the true range of bar 0 is high - low (Wilder), so 14 true ranges end at bar 13.
    DAILY_TREND.name: {"ema_ratio_12": 11, "atr_14": 13, "log_ret_20d": 20, "mfi_14": 14},
}


def _warm_up_cases():
    for view in BUILTIN_VIEWS:
        for feature in view.feature_names:
            marks = []
            yield pytest.param(view.name, feature, id=f"{view.name}.{feature}", marks=marks)


def test_warm_up_table_covers_every_builtin_feature():
    assert {name: sorted(table) for name, table in WARM_UP.items()} == \
        {view.name: sorted(view.feature_names) for view in BUILTIN_VIEWS}


@pytest.mark.parametrize(("view_name", "feature"), list(_warm_up_cases()))
def test_warm_up_rows_are_null_then_values_only(view_name, feature):
    view: FeatureView = VIEWS[view_name]
    column = view.compute_symbol(_walk(view.timeframe, 300))[feature]
    warm_up = WARM_UP[view_name][feature]
    assert column.head(warm_up).is_null().all(), f"{feature}: a warm-up row has a value"
    assert column.slice(warm_up).is_not_null().all(), f"{feature}: null after the warm-up"
    assert column.slice(warm_up).is_finite().all()


@pytest.mark.parametrize("view_name", sorted(VIEWS))
def test_series_shorter_than_the_warm_up_gives_all_null_rows(view_name):
    view = VIEWS[view_name]
    out = view.compute_symbol(_walk(view.timeframe, 5))
    assert out.height == 5
    for feature in view.feature_names:
        warm_up = min(5, WARM_UP[view_name][feature])
        assert out[feature].head(warm_up).null_count() == warm_up, feature
