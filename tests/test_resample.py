"""Resampled bars against an independent aggregation: a plain loop over the stored fine bars, on the bar grid the
contract defines (multiples of the timeframe since the epoch; weeks since Monday 1970-01-05), with gaps, several
symbols and year boundaries. Run through ``ingest_resampled`` (store in, validated bars out) and through the CLI:
only complete periods are stored unless ``--allow-partial`` (recorded, listed by ``validate``); fine bars that
arrive late complete their period instead of blocking the series.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from featurestore.bars import BAR_COLUMNS
from featurestore.errors import StoreConflictError
from featurestore.ingest import ingest_bars, ingest_resampled
from featurestore.partial_bars import read_partial_bars
from featurestore.store import BarSeries, Store

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


def reference(fine: list[tuple], fine_tf: str, coarse_tf: str, *, allow_partial: bool = False) -> list[tuple]:
    """Plain-loop OHLCV per (symbol, period) over rows sorted by (symbol, ts): open first, high max, low min, close
    last, volume summed, and the number of fine bars; a period is kept when every fine bar of it is there, or with
    ``allow_partial`` once the symbol's newest fine bar has closed at or after its end."""
    periods: dict[tuple[str, datetime], list] = {}
    newest_close: dict[str, datetime] = {}
    for symbol, ts, open_, high, low, close, volume in fine:
        key = (symbol, period_open(ts, coarse_tf))
        if key not in periods:
            periods[key] = [open_, high, low, close, volume, 1]
        else:
            bar = periods[key]
            bar[1], bar[2], bar[3], bar[4], bar[5] = max(bar[1], high), min(bar[2], low), close, bar[4] + volume, bar[5] + 1
        newest_close[symbol] = ts + STEP[fine_tf]
    whole = STEP[coarse_tf] // STEP[fine_tf]
    return [(symbol, start, *bar) for (symbol, start), bar in sorted(periods.items())
            if bar[5] == whole or (allow_partial and start + STEP[coarse_tf] <= newest_close[symbol])]


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


def assert_stored_as_the_plain_loop(store: Store, rows: list[tuple], fine_tf: str, coarse_tf: str, *,
                                    allow_partial: bool) -> None:
    """The stored ``coarse_tf`` bars of exchange ``x`` are the plain loop's, and the partial ones exactly are recorded."""
    expected = reference(rows, fine_tf, coarse_tf, allow_partial=allow_partial)
    stored = store.scan_bars("x", coarse_tf).select(BAR_COLUMNS).collect()
    assert stored.rows() == frame([row[:7] for row in expected]).rows()
    whole = STEP[coarse_tf] // STEP[fine_tf]
    recorded = [(s.symbol, ts, count) for s in store.series(exchange="x", timeframe=coarse_tf)
                for ts, _, count, _ in read_partial_bars(store, s).rows()]
    assert recorded == [(symbol, ts, count) for symbol, ts, *_, count in expected if count < whole]


@pytest.mark.parametrize(("fine_tf", "coarse_tf"), PAIRS)
@given(data=st.data(), allow_partial=st.booleans())
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_resampled_bars_equal_a_plain_loop_over_the_stored_fine_bars(tmp_path_factory, fine_tf, coarse_tf, data,
                                                                     allow_partial):
    rows = data.draw(fine_bars(fine_tf))
    store = Store(tmp_path_factory.mktemp("resample"))
    ingest_bars(store, frame(rows), exchange="x", timeframe=fine_tf, source="test")

    ingest_resampled(store, exchange="x", from_timeframe=fine_tf, timeframe=coarse_tf, now=NOW,
                     allow_partial=allow_partial)

    assert_stored_as_the_plain_loop(store, rows, fine_tf, coarse_tf, allow_partial=allow_partial)


@pytest.mark.parametrize(("fine_tf", "coarse_tf"), [("1h", "1d"), ("1d", "1w")])
@given(data=st.data(), allow_partial=st.booleans())
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_fine_bars_arriving_late_give_the_bars_of_resampling_everything_at_once(tmp_path_factory, fine_tf, coarse_tf,
                                                                                 data, allow_partial):
    rows = data.draw(fine_bars(fine_tf))
    early = [row for row in rows if data.draw(st.booleans(), label="early")]
    store = Store(tmp_path_factory.mktemp("late"))
    for batch in (early, [row for row in rows if row not in early]):
        if batch:
            ingest_bars(store, frame(batch), exchange="x", timeframe=fine_tf, source="test")
        ingest_resampled(store, exchange="x", from_timeframe=fine_tf, timeframe=coarse_tf, now=NOW,
                         allow_partial=allow_partial)

    assert_stored_as_the_plain_loop(store, rows, fine_tf, coarse_tf, allow_partial=allow_partial)


def test_weekly_bars_through_the_cli_equal_the_plain_loop_and_a_rerun_adds_nothing(tmp_path, run_cli):
    root = tmp_path / "store"
    fine = run_cli("ingest", "--store", root, "--symbols", "BTC/USDT,ETH/USDT", "--timeframe", "1m",
                   "--since", "2024-12-18T05:00", "--until", "2025-01-16")  # a Wednesday to a Thursday
    assert fine.returncode == 0, fine.stderr
    resample = ("ingest", "--store", root, "--source", "resample", "--from-timeframe", "1m", "--timeframe", "1w")

    weekly = run_cli(*resample)

    assert weekly.returncode == 0, weekly.stderr
    minutes = Store(root).scan_bars("synthetic", "1m").select(BAR_COLUMNS).collect().rows()
    expected = reference(minutes, "1m", "1w")  # Dec 16 began on Wed 05:00 and Jan 13 is not over: neither is whole
    assert sorted({ts.date().isoformat() for _, ts, *_ in expected}) == ["2024-12-23", "2024-12-30", "2025-01-06"]
    got = Store(root).scan_bars("synthetic", "1w").select(BAR_COLUMNS).collect().rows()
    assert [row[:6] for row in got] == [row[:6] for row in expected]
    assert [row[6] for row in got] == pytest.approx([row[6] for row in expected], rel=1e-12)  # summed in another order
    # The same sums, to the bit, every run: a rerun finds every weekly bar stored (no conflict, nothing new).
    again = run_cli(*resample)
    assert again.returncode == 0, again.stderr
    assert "stored 0 new bars" in again.stdout


def _daily(root) -> list[tuple[str, float]]:
    return [(ts.date().isoformat(), volume) for ts, volume in
            Store(root).scan_bars("synthetic", "1d").select("ts", "volume").collect().rows()]


def _hourly_volume(root, day: str) -> object:
    """The day's 24 hourly volumes summed (approximately: the resample sums them in another order)."""
    hours = Store(root).scan_bars("synthetic", "1h").filter(pl.col("ts").dt.date().cast(pl.String) == day)
    hours = hours.collect()
    assert hours.height == 24
    return pytest.approx(hours["volume"].sum(), rel=1e-12)


def _gapped_hours(run_cli, root) -> None:
    """1h bars from 2024-01-01 12:00 to 2024-01-04, without 2024-01-02 08:00-11:00 (a 4-hour gap)."""
    for since, until in (("2024-01-01T12:00", "2024-01-02T08:00"), ("2024-01-02T12:00", "2024-01-04")):
        done = run_cli("ingest", "--store", root, "--timeframe", "1h", "--since", since, "--until", until)
        assert done.returncode == 0, done.stderr


def _fill_the_gap(run_cli, root) -> None:
    done = run_cli("ingest", "--store", root, "--timeframe", "1h", "--since", "2024-01-02T08:00",
                   "--until", "2024-01-02T12:00")
    assert done.returncode == 0 and "stored 4 new bars" in done.stdout, done.stderr


def test_only_complete_days_are_stored_and_late_hours_complete_a_day(tmp_path, run_cli):
    root = tmp_path / "store"
    _gapped_hours(run_cli, root)
    resample = ("ingest", "--store", root, "--source", "resample", "--from-timeframe", "1h", "--timeframe", "1d")

    first = run_cli(*resample)

    assert first.returncode == 0, first.stderr
    assert [day for day, _ in _daily(root)] == ["2024-01-03"]  # 01-01 began at 12:00, 01-02 lacks 4 hours
    assert "stored 0 new bars" in run_cli(*resample).stdout
    _fill_the_gap(run_cli, root)

    completed = run_cli(*resample)

    assert completed.returncode == 0, completed.stderr
    assert "stored 1 new bars" in completed.stdout
    assert _daily(root) == [("2024-01-02", _hourly_volume(root, "2024-01-02")),
                            ("2024-01-03", _hourly_volume(root, "2024-01-03"))]
    assert "stored 0 new bars" in run_cli(*resample).stdout
    # The series is not blocked: the next day comes as soon as its hours are there.
    more = run_cli("ingest", "--store", root, "--timeframe", "1h", "--since", "2024-01-02T12:00", "--until", "2024-01-05")
    assert more.returncode == 0, more.stderr
    assert "stored 1 new bars" in run_cli(*resample).stdout
    assert [day for day, _ in _daily(root)] == ["2024-01-02", "2024-01-03", "2024-01-04"]
    assert not Store(root).partial_bars_file(BarSeries("synthetic", "1d", "BTC/USDT")).exists()


def test_allow_partial_stores_and_records_incomplete_days_until_their_hours_arrive(tmp_path, run_cli):
    root = tmp_path / "store"
    _gapped_hours(run_cli, root)
    resample = ("ingest", "--store", root, "--source", "resample", "--from-timeframe", "1h", "--timeframe", "1d")
    record = Store(root).partial_bars_file(BarSeries("synthetic", "1d", "BTC/USDT"))

    partial = run_cli(*resample, "--allow-partial")

    assert partial.returncode == 0, partial.stderr
    assert [day for day, _ in _daily(root)] == ["2024-01-01", "2024-01-02", "2024-01-03"]
    assert [(bar["ts"][:10], bar["from_timeframe"], bar["fine_bars"], bar["expected"])
            for bar in json.loads(record.read_text())["bars"]] == [("2024-01-01", "1h", 12, 24),
                                                                   ("2024-01-02", "1h", 20, 24)]
    validate = run_cli("validate", "--store", root)
    assert validate.returncode == 0, validate.stderr
    assert "2 bar(s) built from incomplete periods" in validate.stdout
    before = record.read_bytes()
    assert "stored 0 new bars" in run_cli(*resample, "--allow-partial").stdout
    assert record.read_bytes() == before
    _fill_the_gap(run_cli, root)

    completed = run_cli(*resample)  # the complete day replaces the partial one; 01-01 stays as it is

    assert completed.returncode == 0, completed.stderr
    assert "stored 1 new bars" in completed.stdout
    assert _daily(root)[1] == ("2024-01-02", _hourly_volume(root, "2024-01-02"))
    assert [bar["ts"][:10] for bar in json.loads(record.read_text())["bars"]] == ["2024-01-01"]
    assert "1 bar(s) built from incomplete periods" in run_cli("validate", "--store", root).stdout
    assert "stored 0 new bars" in run_cli(*resample, "--allow-partial").stdout


def test_an_unrecorded_coarse_bar_that_disagrees_is_refused_naming_the_directory_to_rebuild(tmp_path):
    """A daily bar stored before periods had to be complete (nothing records it as partial) is never overwritten."""
    store = Store(tmp_path / "store")
    hours = [("BTC/USDT", datetime(2024, 1, 1, h, tzinfo=UTC), 1.0, 2.0, 0.5, 1.5, 1.0) for h in range(24)]
    ingest_bars(store, frame(hours), exchange="x", timeframe="1h", source="test")
    ingest_bars(store, frame([(*hours[0][:6], 20.0)]), exchange="x", timeframe="1d", source="an older resample")
    stored = store.bar_files(BarSeries("x", "1d", "BTC/USDT"))[0].read_bytes()

    with pytest.raises(StoreConflictError, match=r"volume: stored 20.0 vs incoming 24.0.*remove .*timeframe=1d and "
                                                 r"resample again"):
        ingest_resampled(store, exchange="x", from_timeframe="1h", timeframe="1d", now=NOW)

    assert store.bar_files(BarSeries("x", "1d", "BTC/USDT"))[0].read_bytes() == stored
