"""Sources: TradingView-style CSV files through the CLI, and the deterministic synthetic market."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from featurestore.bars import validate_bars
from featurestore.errors import BarValidationError
from featurestore.ingest import ingest_csv
from featurestore.sources.synthetic import Regime, synthetic_bars
from featurestore.store import Store
from featurestore.timeframes import timeframe_ms


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


DAYS = [utc(2024, 1, d) for d in range(1, 6)]
# (open, high, low, close, volume) per day; every bar is valid.
VALUES = [(100.0, 110.5, 95.25, 105.0, 12.5), (105.0, 107.0, 101.0, 102.0, 0.0), (102.0, 120.0, 100.0, 119.0, 7.75),
          (119.0, 119.5, 111.0, 112.125, 3.0), (112.125, 118.0, 112.125, 117.0, 1e6)]


def write_csv(path: Path, header: str, times: list[str], values=VALUES) -> Path:
    lines = [header, *(f"{t}," + ",".join(repr(v) for v in row) for t, row in zip(times, values, strict=True))]
    path.write_text("\n".join(lines) + "\n")
    return path


def ingest_cli(run_cli, path: Path, store: Path, timeframe: str = "1d"):
    return run_cli("ingest", "--source", "csv", "--path", path, "--symbol", "BTC/USDT", "--timeframe", timeframe,
                   "--store", store)


def assert_refused(result, store: Path, *messages: str) -> None:
    """The CLI exited 1 with each of ``messages`` in its error, no traceback, and stored nothing."""
    assert result.returncode == 1, result.stdout
    for message in messages:
        assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not (store / "kind=bars").exists()


# ---------------------------------------------------------------------------------------------------------
# CSV through the CLI

TIME_FORMATS = {
    "epoch seconds, capitalised headers": ("Time,Open,High,Low,Close,Volume",
                                           [str(int(d.timestamp())) for d in DAYS]),
    "epoch milliseconds": ("time,open,high,low,close,volume", [str(int(d.timestamp()) * 1000) for d in DAYS]),
    "ISO-8601 with Z": ("time,open,high,low,close,volume", [d.strftime("%Y-%m-%dT%H:%M:%SZ") for d in DAYS]),
}


@pytest.mark.parametrize("fmt", list(TIME_FORMATS))
def test_csv_import_via_the_cli(run_cli, tmp_path, fmt):
    header, times = TIME_FORMATS[fmt]
    path = write_csv(tmp_path / "btc.csv", header, times)

    result = ingest_cli(run_cli, path, tmp_path / "store")

    assert result.returncode == 0, result.stderr
    assert "BTC/USDT: 5 new bars" in result.stdout
    stored = Store(tmp_path / "store").scan_bars("csv", "1d").collect()
    expected = pl.DataFrame([(d, *v) for d, v in zip(DAYS, VALUES, strict=True)],
                            schema=["ts", "open", "high", "low", "close", "volume"], orient="row")
    assert stored["symbol"].unique().to_list() == ["BTC/USDT"]
    assert stored["ts"].to_list() == DAYS
    assert_frame_equal(stored.select(expected.columns[1:]), expected.drop("ts"), check_exact=True)


def test_csv_iso_times_with_another_offset_are_converted_to_utc(tmp_path):
    times = [(d + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%S+02:00") for d in DAYS]
    path = write_csv(tmp_path / "btc.csv", "time,open,high,low,close,volume", times)
    store = Store(tmp_path / "store")
    assert ingest_csv(store, path, symbol="BTC/USDT", timeframe="1d", now=utc(2030, 1, 1)) == {"BTC/USDT": 5}
    assert store.scan_bars("csv", "1d").collect()["ts"].to_list() == DAYS


def test_csv_non_numeric_price_names_file_line_and_field(run_cli, tmp_path, hash_tree):
    path = tmp_path / "btc.csv"
    write_csv(path, "time,open,high,low,close,volume", [str(int(d.timestamp())) for d in DAYS])
    lines = path.read_text().splitlines()
    lines[3] = lines[3].replace(",119.0,", ",n/a,")  # data row 3 is line 4 of the file; 119.0 is its close
    path.write_text("\n".join(lines) + "\n")

    result = ingest_cli(run_cli, path, tmp_path / "store")

    assert_refused(result, tmp_path / "store", f"source {path} line 4", "close='n/a' is not a number")


def test_csv_iso_time_without_offset_is_refused_naming_the_line(run_cli, tmp_path):
    times = [d.strftime("%Y-%m-%dT%H:%M:%SZ") for d in DAYS]
    times[2] = "2024-01-03T00:00:00"  # line 4: no offset, so its timezone would be a guess
    path = write_csv(tmp_path / "btc.csv", "time,open,high,low,close,volume", times)

    result = ingest_cli(run_cli, path, tmp_path / "store")

    assert_refused(result, tmp_path / "store", f"source {path} line 4", "time='2024-01-03T00:00:00' has no UTC offset",
                   "pass --timezone ZONE")


def test_csv_missing_column_is_named(run_cli, tmp_path):
    path = tmp_path / "btc.csv"
    path.write_text("time,open,high,low,close\n1704067200,1,2,0.5,1.5\n")

    result = ingest_cli(run_cli, path, tmp_path / "store")

    assert_refused(result, tmp_path / "store", f"source {path}", "missing column(s) ['volume']")


def test_csv_in_progress_last_candle_is_dropped(tmp_path):
    path = write_csv(tmp_path / "btc.csv", "time,open,high,low,close,volume", [str(int(d.timestamp())) for d in DAYS])
    store = Store(tmp_path / "store")

    # At noon on Jan 5 the Jan 5 daily candle is still open: it is not stored.
    assert ingest_csv(store, path, symbol="BTC/USDT", timeframe="1d", now=utc(2024, 1, 5, 12)) == {"BTC/USDT": 4}
    assert store.scan_bars("csv", "1d").collect()["ts"].to_list() == DAYS[:4]
    # It is closed at exactly ts + 1d, and a later import adds just that bar.
    assert ingest_csv(store, path, symbol="BTC/USDT", timeframe="1d", now=utc(2024, 1, 6)) == {"BTC/USDT": 1}
    assert store.scan_bars("csv", "1d").collect()["ts"].to_list() == DAYS


def test_csv_rule_violation_names_the_line(tmp_path):
    values = list(VALUES)
    values[2] = (102.0, 120.0, 103.0, 119.0, 7.75)  # low 103 above open 102: line 4 of the file
    path = write_csv(tmp_path / "btc.csv", "time,open,high,low,close,volume",
                     [str(int(d.timestamp())) for d in DAYS], values)
    with pytest.raises(BarValidationError, match="line 4"):
        ingest_csv(Store(tmp_path / "store"), path, symbol="BTC/USDT", timeframe="1d", now=utc(2030, 1, 1))


def test_csv_with_only_a_header_is_an_error_naming_the_file(run_cli, tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("time,open,high,low,close,volume\n")

    result = ingest_cli(run_cli, path, tmp_path / "store")

    assert_refused(result, tmp_path / "store", f"source {path}", "the file has no rows after its header")


EPOCHS = [str(int(d.timestamp())) for d in DAYS]


def stored_csv_bars(store: Path) -> list[tuple]:
    return Store(store).scan_bars("csv", "1d").select("ts", "open", "high", "low", "close", "volume").collect().rows()


EXPECTED_ROWS = [(d, *v) for d, v in zip(DAYS, VALUES, strict=True)]


@pytest.mark.parametrize(("encoding", "newline"), [("utf-8-sig", "\r\n"), ("utf-8-sig", "\n"), ("utf-8", "\r\n")])
def test_csv_with_a_byte_order_mark_or_crlf_line_ends_reads_the_same_bars(tmp_path, encoding, newline):
    lines = ["Time,Open,High,Low,Close,Volume", *(f"{d:%Y-%m-%dT%H:%M:%SZ}," + ",".join(map(repr, v))
                                                for d, v in zip(DAYS, VALUES, strict=True))]
    path = tmp_path / "btc.csv"
    path.write_bytes(newline.join(lines).encode(encoding) + newline.encode())
    assert ingest_csv(Store(tmp_path / "store"), path, symbol="BTC/USDT", timeframe="1d",
                      now=utc(2030, 1, 1)) == {"BTC/USDT": 5}
    assert stored_csv_bars(tmp_path / "store") == EXPECTED_ROWS


@pytest.mark.parametrize("scale", [1, 1000])  # epoch seconds and milliseconds, written as floats (pandas: 1.7e9 -> "1704067200.0")
def test_csv_whole_float_epochs_are_the_same_instants(tmp_path, scale):
    times = [f"{int(d.timestamp()) * scale}.0" for d in DAYS]
    path = write_csv(tmp_path / "btc.csv", "time,open,high,low,close,volume", times)
    store = Store(tmp_path / "store")
    assert ingest_csv(store, path, symbol="BTC/USDT", timeframe="1d", now=utc(2030, 1, 1)) == {"BTC/USDT": 5}
    assert stored_csv_bars(tmp_path / "store") == EXPECTED_ROWS


def test_csv_fractional_epoch_is_refused_naming_the_line(run_cli, tmp_path):
    times = [f"{int(d.timestamp())}.0" for d in DAYS]
    times[3] = f"{int(DAYS[3].timestamp())}.25"  # line 5: a quarter second past the day's open
    path = write_csv(tmp_path / "btc.csv", "time,open,high,low,close,volume", times)

    result = ingest_cli(run_cli, path, tmp_path / "store")

    assert_refused(result, tmp_path / "store", f"source {path} line 5", f"time={times[3]} is not a whole number")


@pytest.mark.parametrize(("order", "line"), [
    ([0, 1, 3, 2, 4], 5),  # unsorted: the row of Jan 3 (line 5) comes after Jan 4's
    ([0, 1, 2, 2, 3, 4], 5),  # an exact duplicate of line 4 on line 5
])
def test_csv_unsorted_or_duplicate_rows_are_refused_naming_the_line(run_cli, tmp_path, order, line):
    """The bar contract: ``ts`` strictly increasing per symbol; a file is never reordered or deduplicated."""
    path = write_csv(tmp_path / "btc.csv", "time,open,high,low,close,volume", [EPOCHS[i] for i in order],
                     [VALUES[i] for i in order])
    path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))  # CRLF: the line numbers stay right

    result = ingest_cli(run_cli, path, tmp_path / "store")

    assert_refused(result, tmp_path / "store", f"source {path}", f"(line {line})",
                   "rule 'ts strictly increasing per symbol' broken")


def test_validate_lists_the_gap_of_a_gapped_csv(run_cli, tmp_path):
    days = [utc(2024, 1, d) for d in (1, 2, 3, 7, 8)]  # Jan 4, 5 and 6 are missing
    path = write_csv(tmp_path / "gapped.csv", "time,open,high,low,close,volume",
                     [str(int(d.timestamp())) for d in days])
    assert ingest_csv(Store(tmp_path / "store"), path, symbol="BTC/USDT", timeframe="1d",
                      now=utc(2030, 1, 1)) == {"BTC/USDT": 5}

    result = run_cli("validate", "--store", tmp_path / "store")

    assert result.returncode == 0, result.stderr
    assert "1 gap(s):" in result.stdout
    (gap_row,) = [line for line in result.stdout.splitlines() if "2024-01-04" in line]
    cells = [cell.strip() for cell in gap_row.replace("│", "┆").split("┆")]
    assert cells[1:6] == ["csv", "1d", "BTC/USDT", "2024-01-04 00:00:00 UTC", "3"]


# ---------------------------------------------------------------------------------------------------------
# The synthetic market

SYMBOLS = ["BTC/USDT", "ETH/USDT", "SOL/USDT"]


def test_synthetic_is_deterministic_per_seed():
    args = {"since": utc(2024, 1, 1), "until": utc(2024, 2, 1)}
    first = synthetic_bars(SYMBOLS, "1h", seed=7, **args)
    assert first.equals(synthetic_bars(SYMBOLS, "1h", seed=7, **args))
    other = synthetic_bars(SYMBOLS, "1h", seed=8, **args)
    assert other["ts"].equals(first["ts"])
    for column in ("high", "low", "close", "volume"):
        assert (other[column] != first[column]).mean() > 0.99
    # A symbol's series does not depend on which other symbols are generated with it.
    alone = synthetic_bars(["ETH/USDT"], "1h", seed=7, **args)
    assert_frame_equal(first.filter(pl.col("symbol") == "ETH/USDT"), alone, check_exact=True)


@pytest.mark.parametrize(("timeframe", "days"), [
    ("1m", 2), ("1h", 30), ("1d", 400), ("1w", 400), ("7d", 400),
])
def test_synthetic_bars_pass_validation(timeframe, days):
    since = utc(2024, 1, 3, 10, 17)  # not aligned to any timeframe: the first bar is the next aligned open
    until = since + timedelta(days=days)
    bars = synthetic_bars(SYMBOLS, timeframe, since=since, until=until)

    assert_frame_equal(validate_bars(bars, timeframe), bars, check_exact=True)
    step = timedelta(milliseconds=timeframe_ms(timeframe))
    for _, series in bars.group_by("symbol"):
        first, last = series["ts"].min(), series["ts"].max()
        assert since <= first < since + step
        assert until - step <= last < until
        assert series.height == (last - first) // step + 1  # no gaps
    # Bars are continuous: each opens at the previous close.
    assert bars.select((pl.col("open") == pl.col("close").shift(1)).over("symbol").drop_nulls().all()).item()


def _log_returns(series: pl.DataFrame) -> np.ndarray:
    return np.log(series["close"].to_numpy() / series["open"].to_numpy())


def test_synthetic_stylised_facts_hold_on_a_year_of_hourly_bars():
    bars = synthetic_bars(SYMBOLS, "1h", since=utc(2024, 1, 1), until=utc(2025, 1, 1))
    assert bars.height == 3 * 366 * 24
    for (symbol,), series in bars.group_by("symbol"):
        ret = _log_returns(series)
        centred = ret - ret.mean()
        excess_kurtosis = (centred**4).mean() / centred.var() ** 2 - 3
        assert excess_kurtosis > 3, f"{symbol}: returns are not fat-tailed ({excess_kurtosis:.2f})"
        size = np.abs(centred)
        for lag in range(1, 6):
            clustering = np.corrcoef(size[:-lag], size[lag:])[0, 1]
            assert clustering > 0.05, f"{symbol}: no volatility clustering at lag {lag} ({clustering:.3f})"
        volume_link = np.corrcoef(np.abs(ret), series["volume"].to_numpy())[0, 1]
        assert volume_link > 0.2, f"{symbol}: volume does not follow |return| ({volume_link:.3f})"


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 3 * 1440), st.floats(0.2, 5.0), st.floats(-0.2, 0.2), st.sampled_from(["1m", "5m", "1h"]))
def test_a_regime_switch_leaves_every_bar_before_it_as_it_was(minute, volatility, drift, timeframe):
    since, until = datetime(2024, 3, 1, tzinfo=UTC), datetime(2024, 3, 4, tzinfo=UTC)
    at = since + timedelta(minutes=minute)
    plain = synthetic_bars(["BTC/USDT", "ETH/USDT"], timeframe, since=since, until=until)
    switched = synthetic_bars(["BTC/USDT", "ETH/USDT"], timeframe, since=since, until=until,
                              regime=Regime(at, volatility=volatility, drift=drift))
    before = pl.col("ts") < at
    assert_frame_equal(switched.filter(before), plain.filter(before))
    after = switched.filter(~before)
    if after.height and (volatility != 1.0 or drift != 0.0):
        assert not after.equals(plain.filter(~before))
    validate_bars(switched, timeframe)


def test_a_regime_switch_through_the_cli_raises_volatility_after_it(run_cli, tmp_path):
    store = tmp_path / "store"
    done = run_cli("ingest", "--store", store, "--timeframe", "1h", "--start", "2024-01-01", "--end", "2024-03-01",
                   "--regime-at", "2024-02-01", "--regime-volatility", "4", "--regime-drift", "-0.05")
    assert done.returncode == 0, done.stderr
    bars = Store(store).scan_bars("synthetic", "1h").collect()
    vol = bars.with_columns(r=pl.col("close").log().diff()).group_by(pl.col("ts") >= datetime(2024, 2, 1, tzinfo=UTC)
                                                                      ).agg(pl.col("r").std()).sort("ts")["r"]
    assert vol[1] > 2.5 * vol[0]
    refused = run_cli("ingest", "--store", store, "--regime-at", "2024-02-01", "--regime-volatility", "0")
    assert refused.returncode == 2 and "--regime-volatility: '0' is not a finite number > 0" in refused.stderr
