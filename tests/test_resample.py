"""Resampled bars against an independent aggregation: a plain loop over the stored fine bars, on the bar grid the
contract defines (multiples of the timeframe since the epoch; weeks since Monday 1970-01-05), with gaps, several
symbols and year boundaries. Run through ``ingest_resampled`` (store in, validated bars out) and once through the CLI.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from featurestore.bars import BAR_COLUMNS
from featurestore.ingest import ingest_bars, ingest_resampled
from featurestore.store import Store

NOW = datetime(2030, 1, 1, tzinfo=UTC)
FIRST_MONDAY = datetime(1970, 1, 5, tzinfo=UTC)
STEP = {"1m": timedelta(minutes=1), "5m": timedelta(minutes=5), "15m": timedelta(minutes=15), "1h": timedelta(hours=1),
        "4h": timedelta(hours=4), "1d": timedelta(days=1), "3d": timedelta(days=3), "1w": timedelta(weeks=1),
        "2w": timedelta(weeks=2)}
PAIRS = [("1m", "5m"), ("15m", "1h"), ("1h", "4h"), ("1h", "1d"), ("4h", "3d"), ("1h", "1w"), ("1d", "1w"),
         ("1d", "2w")]


def period_open(ts: datetime, timeframe: str) -> datetime:
    """The open of the ``timeframe`` bar holding ``ts``: weeks count from Monday 1970-01-05, the rest from the epoch."""
    origin = FIRST_MONDAY if timeframe.endswith("w") else datetime(1970, 1, 1, tzinfo=UTC)
    return origin + (ts - origin) // STEP[timeframe] * STEP[timeframe]


def reference(fine: list[tuple], fine_tf: str, coarse_tf: str) -> list[tuple]:
    """Plain-loop OHLCV per (symbol, period) over rows sorted by (symbol, ts): open first, high max, low min, close
    last, volume summed; a period is kept once the symbol's newest fine bar has closed at or after its end."""
    periods: dict[tuple[str, datetime], list] = {}
    newest_close: dict[str, datetime] = {}
    for symbol, ts, open_, high, low, close, volume in fine:
        key = (symbol, period_open(ts, coarse_tf))
        if key not in periods:
            periods[key] = [open_, high, low, close, volume]
        else:
            bar = periods[key]
            bar[1], bar[2], bar[3], bar[4] = max(bar[1], high), min(bar[2], low), close, bar[4] + volume
        newest_close[symbol] = ts + STEP[fine_tf]
    return [(symbol, start, *bar) for (symbol, start), bar in sorted(periods.items())
            if start + STEP[coarse_tf] <= newest_close[symbol]]


@st.composite
def fine_bars(draw, fine_tf: str) -> list[tuple]:
    """1-2 symbols of ``fine_tf`` bars from a random start up to 400 bars before 2025 (across the new year),
    with random gaps; prices and volumes in eighths so every sum is exact in any order of addition."""
    rows = []
    for symbol in draw(st.sampled_from([["BTC/USDT"], ["BTC/USDT", "ETH/USDT"]])):
        ts = datetime(2025, 1, 1, tzinfo=UTC) - draw(st.integers(1, 400)) * STEP[fine_tf]
        price = 100.0
        for _ in range(draw(st.integers(1, 120))):
            ts += STEP[fine_tf] * draw(st.sampled_from([1, 1, 1, 1, 2, 7]))  # mostly consecutive, some gaps
            move, wick, volume = (draw(st.integers(-16, 16)) / 8, draw(st.integers(0, 8)) / 8,
                                  draw(st.integers(0, 800)) / 8)
            close = max(1.0, price + move)
            rows.append((symbol, ts, price, max(price, close) + wick, min(price, close) - wick / 8, close, volume))
            price = close
    return rows


def frame(rows: list[tuple]) -> pl.DataFrame:
    schema = {"symbol": pl.String, "ts": pl.Datetime("us", "UTC"), **{c: pl.Float64 for c in BAR_COLUMNS[2:]}}
    return pl.DataFrame(rows, schema=schema, orient="row").with_columns(pl.col("ts").cast(pl.Datetime("ms", "UTC")))


@pytest.mark.parametrize(("fine_tf", "coarse_tf"), PAIRS)
@given(data=st.data())
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_resampled_bars_equal_a_plain_loop_over_the_stored_fine_bars(tmp_path_factory, fine_tf, coarse_tf, data):
    rows = data.draw(fine_bars(fine_tf))
    store = Store(tmp_path_factory.mktemp("resample"))
    ingest_bars(store, frame(rows), exchange="x", timeframe=fine_tf, source="test")

    ingest_resampled(store, exchange="x", from_timeframe=fine_tf, timeframe=coarse_tf, now=NOW)

    stored = store.scan_bars("x", coarse_tf).select(BAR_COLUMNS).collect()
    assert stored.rows() == frame(reference(rows, fine_tf, coarse_tf)).rows()


def test_weekly_bars_through_the_cli_equal_the_plain_loop_and_a_rerun_adds_nothing(tmp_path, run_cli):
    root = tmp_path / "store"
    fine = run_cli("ingest", "--store", root, "--symbols", "BTC/USDT,ETH/USDT", "--timeframe", "1m",
                   "--since", "2024-12-18T05:00", "--until", "2025-01-16")  # a Wednesday to a Thursday
    assert fine.returncode == 0, fine.stderr
    resample = ("ingest", "--store", root, "--source", "resample", "--from-timeframe", "1m", "--timeframe", "1w")

    weekly = run_cli(*resample)

    assert weekly.returncode == 0, weekly.stderr
    minutes = Store(root).scan_bars("synthetic", "1m").select(BAR_COLUMNS).collect().rows()
    expected = reference(minutes, "1m", "1w")  # Mon Dec 16 (from Wed 05:00) to Mon Jan 6 (Jan 13 is not over)
    assert [ts.date().isoformat() for _, ts, *_ in expected[:4]] == ["2024-12-16", "2024-12-23", "2024-12-30",
                                                                   "2025-01-06"]
    got = Store(root).scan_bars("synthetic", "1w").select(BAR_COLUMNS).collect().rows()
    assert [row[:6] for row in got] == [row[:6] for row in expected]
    assert [row[6] for row in got] == pytest.approx([row[6] for row in expected], rel=1e-12)  # summed in another order
    # The same sums, to the bit, every run: a rerun finds every weekly bar stored (no conflict, nothing new).
    again = run_cli(*resample)
    assert again.returncode == 0, again.stderr
    assert "stored 0 new bars" in again.stdout
