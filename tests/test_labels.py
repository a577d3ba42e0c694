"""Labels against slow references written from the definitions in semantics.md and training/labels.py."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from featurestore.errors import LabelSpecError
from training.labels import (
    LabelSpec,
    bucket,
    future_log_return,
    parse_label,
    triple_barrier,
    uniqueness_weights,
)

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def make_bars(close: list[float], spread: list[float] | None = None, timeframe_h: int = 1) -> pl.DataFrame:
    """Gapless bars; high/low straddle the close by ``spread`` (relative)."""
    spread = spread or [0.01] * len(close)
    return pl.DataFrame({
        "ts": [T0 + timedelta(hours=timeframe_h * i) for i in range(len(close))],
        "open": close, "high": [c * (1 + s) for c, s in zip(close, spread, strict=True)],
        "low": [c * (1 - s) for c, s in zip(close, spread, strict=True)], "close": close,
        "volume": [1.0] * len(close),
    }).with_columns(pl.col("ts").dt.cast_time_unit("ms"))


prices = st.lists(st.floats(min_value=0.5, max_value=2.0), min_size=1, max_size=40)


# --- parsing -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("future_ret:h=1", LabelSpec("future_ret", 1)),
    ("bucket:h=12", LabelSpec("bucket", 12, x=0.01)),
    ("bucket:h=12,x=0.02", LabelSpec("bucket", 12, x=0.02)),
    (" triple_barrier: h=24, pt=2, sl=2, atr=14 ", LabelSpec("triple_barrier", 24, pt=2.0, sl=2.0, atr=14)),
    ("triple_barrier:h=5,pt=0.02,sl=0", LabelSpec("triple_barrier", 5, pt=0.02, sl=0.0)),
])
def test_parse_label_and_canonical_round_trip(text, expected):
    spec = parse_label(text)
    assert spec == expected
    assert parse_label(spec.spec) == spec


@pytest.mark.parametrize(("text", "message"), [
    ("futur_ret:h=1", "unknown kind 'futur_ret'; did you mean 'future_ret'?"),
    ("future_ret", "the horizon h is required"),
    ("future_ret:h=0", "h must be an integer >= 1, got '0'"),
    ("future_ret:h=1.5", "h must be an integer >= 1, got '1.5'"),
    ("future_ret:h=1,x=2", "unknown parameter 'x' for future_ret"),
    ("future_ret:h=1,h=2", "parameter 'h' given twice"),
    ("future_ret:h", "expected key=value, got 'h'"),
    ("bucket:h=3,x=0", "x must be a number > 0, got '0'"),
    ("bucket:h=3,x=abc", "x must be a number > 0, got 'abc'"),
    ("triple_barrier:h=3,pt=2", "sl required"),
    ("triple_barrier:h=3,pt=0,sl=0,atr=14", "both 0"),
    ("triple_barrier:h=3,pt=2,sl=2", "must be < 1"),
    ("triple_barrier:h=3,pt=1,sl=1,atr=0", "atr must be an integer >= 1"),
])
def test_parse_label_errors_name_the_problem(text, message):
    with pytest.raises(LabelSpecError, match="label .*" + message.replace("(", r"\(").replace(")", r"\)")
                       .replace("?", r"\?").replace(".", r"\.")):
        parse_label(text)


# --- future_ret: semantics.md, in time terms ---------------------------------------------------------

@given(close=prices, h=st.integers(1, 6))
@settings(max_examples=60, deadline=None)
def test_future_ret_matches_semantics_wording(close, h):
    """Row stamped t: log(close of the bar opening at t+(h-1) / close of the bar opening at t-1), null when
    that bar does not exist (bar index = open time, one hour apart)."""
    bars = make_bars(close)
    out = parse_label(f"future_ret:h={h}").compute(bars, "1h")
    by_open = dict(zip(bars["ts"].to_list(), close, strict=True))
    step = timedelta(hours=1)
    for t, value, end in out.select("ts", f"future_ret_h{h}", f"future_ret_h{h}__end_ts").iter_rows():
        later, known = by_open.get(t + (h - 1) * step), by_open[t - step]
        if later is None:
            assert value is None and end is None
        else:
            assert value == pytest.approx(math.log(later / known), abs=1e-15)
            assert end == t + h * step  # the close of the last bar the label reads


def test_future_ret_h1_is_the_return_of_the_bar_opening_at_t():
    bars = make_bars([100.0, 110.0, 99.0])
    out = parse_label("future_ret:h=1").compute(bars, "1h")
    # the row at 01:00 (close of the 00:00 bar) gets the return of the bar opening at 01:00
    assert out.row(0) == (T0 + timedelta(hours=1), pytest.approx(math.log(110 / 100)), T0 + timedelta(hours=2))
    assert out["future_ret_h1"][-1] is None


@given(close=prices, h=st.integers(1, 5), x=st.sampled_from([0.001, 0.01, 0.1]))
@settings(max_examples=60, deadline=None)
def test_bucket_matches_reference(close, h, x):
    out = parse_label(f"bucket:h={h},x={x}").compute(make_bars(close), "1h")
    for i, (value, ret) in enumerate(out.select(f"bucket_h{h}", f"bucket_h{h}__ret").iter_rows()):
        if i + h >= len(close):
            assert value is None and ret is None
            continue
        r = math.log(close[i + h] / close[i])
        assert ret == pytest.approx(r, abs=1e-15)
        assert value == (-1 if r < -x else 1 if r > x else 0)


def test_bucket_bounds_are_neutral():
    assert bucket(np.array([-0.01, 0.01, -0.0100001, 0.0100001]), 0.01).tolist() == [0.0, 0.0, -1.0, 1.0]


# --- triple barrier -------------------------------------------------------------------------------

def slow_triple_barrier(high, low, close, h, upper, lower):
    """Bar by bar, as documented: stop-loss wins a tie; vertical barrier -> 0; unknown -> None."""
    out = []
    n = len(close)
    for i in range(n):
        if math.isnan(upper[i]) or math.isnan(lower[i]):
            out.append((None, None, None))
            continue
        result = None
        for j in range(i + 1, min(i + h, n - 1) + 1):
            if low[j] <= lower[i]:
                result = (-1, math.log(lower[i] / close[i]), j)
                break
            if high[j] >= upper[i]:
                result = (1, math.log(upper[i] / close[i]), j)
                break
        if result is None and i + h < n:
            result = (0, math.log(close[i + h] / close[i]), i + h)
        out.append(result or (None, None, None))
    return out


paths = st.lists(st.tuples(st.floats(0.8, 1.25), st.floats(0.0, 0.06), st.floats(0.0, 0.06)), min_size=1, max_size=30)


@given(path=paths, h=st.integers(1, 6), pt=st.sampled_from([0.0, 0.01, 0.03]), sl=st.sampled_from([0.0, 0.01, 0.03]))
@settings(max_examples=150, deadline=None)
def test_triple_barrier_matches_slow_reference(path, h, pt, sl):
    if pt == 0 and sl == 0:
        sl = 0.02
    close = np.array([p[0] for p in path])
    high, low = close * (1 + np.array([p[1] for p in path])), close * (1 - np.array([p[2] for p in path]))
    upper = close * (1 + pt) if pt else np.full(close.size, np.inf)
    lower = close * (1 - sl) if sl else np.full(close.size, -np.inf)
    label, ret, end = triple_barrier(high, low, close, h, upper, lower)
    for i, (want_label, want_ret, want_end) in enumerate(slow_triple_barrier(high, low, close, h, upper, lower)):
        if want_label is None:
            assert np.isnan(label[i]) and np.isnan(ret[i]) and end[i] == -1
        else:
            assert (label[i], end[i]) == (want_label, want_end)
            assert ret[i] == pytest.approx(want_ret, abs=1e-15)


def test_triple_barrier_tie_in_one_bar_is_a_stop_loss():
    close = np.array([100.0, 100.0, 100.0])
    high, low = np.array([100.0, 103.0, 100.0]), np.array([100.0, 97.0, 100.0])  # bar 1 crosses both barriers
    label, ret, end = triple_barrier(high, low, close, 2, close * 1.02, close * 0.98)
    assert (label[0], end[0]) == (-1.0, 1)
    assert ret[0] == pytest.approx(math.log(0.98))


def test_triple_barrier_touch_before_the_data_ends_is_known_else_null():
    close = np.array([100.0, 100.0, 100.0])
    high, low = np.array([100.0, 100.5, 100.0]), np.array([100.0, 99.5, 100.0])
    label, _, _ = triple_barrier(high, low, close, 5, close * 1.004, close * 0.99)
    assert label[0] == 1.0  # touched in bar 1 although bars 3..5 are not stored
    assert np.isnan(label[1]) and np.isnan(label[2])  # untouched and the vertical barrier is not stored


def wilder_atr(high, low, close, n):
    tr = [high[0] - low[0]] + [max(high[i] - low[i], abs(high[i] - close[i - 1]), abs(low[i] - close[i - 1]))
                               for i in range(1, len(close))]
    out, state = [], None
    for i, value in enumerate(tr):
        state = value if state is None else (1 - 1 / n) * state + value / n
        out.append(state if i >= n - 1 else math.nan)
    return np.array(out)


@given(path=paths.filter(lambda p: len(p) >= 5), h=st.integers(1, 4), atr=st.integers(1, 4))
@settings(max_examples=60, deadline=None)
def test_triple_barrier_in_atr_multiples_matches_reference(path, h, atr):
    close = [p[0] for p in path]
    bars = make_bars(close).with_columns(
        high=pl.Series([c * (1 + p[1]) for c, p in zip(close, path, strict=True)]),
        low=pl.Series([c * (1 - p[2]) for c, p in zip(close, path, strict=True)]))
    high, low, close_a = (bars[c].to_numpy() for c in ("high", "low", "close"))
    width = wilder_atr(high, low, close_a, atr)
    expected = slow_triple_barrier(high, low, close_a, h, close_a + 1.5 * width, close_a - 0.5 * width)
    out = parse_label(f"triple_barrier:h={h},pt=1.5,sl=0.5,atr={atr}").compute(bars, "1h")
    for row, (want_label, want_ret, want_end) in zip(out.iter_rows(named=True), expected, strict=True):
        assert row[f"tb_h{h}"] == want_label
        if want_label is None:
            assert row[f"tb_h{h}__ret"] is None and row[f"tb_h{h}__end_ts"] is None
        else:
            assert row[f"tb_h{h}__ret"] == pytest.approx(want_ret, rel=1e-9, abs=1e-12)
            assert row[f"tb_h{h}__end_ts"] == bars["ts"][want_end] + timedelta(hours=1)


# --- sample uniqueness --------------------------------------------------------------------------

@given(spans=st.lists(st.tuples(st.integers(0, 20), st.integers(1, 6)), min_size=1, max_size=25))
@settings(max_examples=100, deadline=None)
def test_uniqueness_weights_match_brute_force(spans):
    grid = np.arange(1, 30, dtype=np.float64)  # bar close times
    start = np.array([s for s, _ in spans], dtype=np.float64)
    end = start + np.array([d for _, d in spans], dtype=np.float64)
    got = uniqueness_weights(start, end, grid)
    covered = [[b for b in grid if s < b <= e] for s, e in zip(start, end, strict=True)]
    for k, bars in enumerate(covered):
        concurrency = [sum(b in other for other in covered) for b in bars]
        assert got[k] == pytest.approx(np.mean([1 / c for c in concurrency]))
    assert ((got > 0) & (got <= 1)).all()


def test_uniqueness_weight_is_nan_for_unknown_labels():
    got = uniqueness_weights(np.array([0.0, 1.0]), np.array([np.nan, 2.0]), np.arange(1.0, 4.0))
    assert np.isnan(got[0]) and got[1] == 1.0


def test_future_log_return_short_series():
    assert np.isnan(future_log_return(np.array([1.0, 2.0]), 3)).all()
