"""CSV files as exchanges, data vendors and spreadsheets write them (docs/csv.md): the usual header spellings,
naive times with ``--timezone``, epochs in any unit, and an import that stores nothing saying why."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from featurestore.errors import BarValidationError, FeatureStoreError
from featurestore.ingest import ingest_csv
from featurestore.store import Store

DAYS = [datetime(2024, 3, d, tzinfo=UTC) for d in range(1, 4)]
ROWS = ["100,110,95,105,12.5", "105,107,101,102,0", "102,120,100,119,7.75"]
NOW = datetime(2030, 1, 1, tzinfo=UTC)


def write(path: Path, header: str, times: list[str]) -> Path:
    path.write_text("\n".join([header, *(f"{t},{row}" for t, row in zip(times, ROWS, strict=True))]) + "\n")
    return path


def stored_ts(store: Path) -> list[datetime]:
    return Store(store).scan_bars("csv", "1d").collect()["ts"].to_list()


def cli_ingest(run_cli, path: Path, store: Path, *options: str):
    return run_cli("ingest", "--source", "csv", "--path", path, "--symbol", "BTC/USDT", "--timeframe", "1d",
                   "--store", store, *options)


def test_a_vendor_export_with_naive_dates_reads_in_the_given_timezone(run_cli, tmp_path):
    """Yahoo-style ``Date,Open,High,Low,Close,Adj Close,Vol`` with naive dates; New York midnight is 05:00 UTC,
    so these daily bars must be read on a 1d grid in a zone whose midnight is UTC midnight."""
    path = write(tmp_path / "btc.csv", "Date,Open,High,Low,Close,Vol", [f"{d:%Y-%m-%d}" for d in DAYS])

    refused = cli_ingest(run_cli, path, tmp_path / "store")
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert f"{path} line 2" in refused.stderr and "pass --timezone ZONE" in refused.stderr, refused.stderr

    result = cli_ingest(run_cli, path, tmp_path / "store", "--timezone", "Europe/London")  # GMT in March: UTC+0
    assert result.returncode == 0, result.stderr
    assert "BTC/USDT: 3 new bars" in result.stdout
    assert stored_ts(tmp_path / "store") == DAYS


@pytest.mark.parametrize("header", [
    "timestamp,open,high,low,close,volume", "Datetime,Open,High,Low,Close,Volume", "open_time,o,h,l,c,v",
    "Open Time,Open,High,Low,Close,Volume,Close Time,Quote Asset Volume", "DATE,OPEN,HIGH,LOW,CLOSE,VOL",
])
def test_usual_header_spellings_are_read(tmp_path, header):
    path = tmp_path / "btc.csv"
    extra = ",1,2" if "Close Time" in header else ""
    path.write_text("\n".join([header, *(f"{d:%Y-%m-%dT%H:%M:%SZ},{row}{extra}"
                                         for d, row in zip(DAYS, ROWS, strict=True))]) + "\n")
    assert ingest_csv(Store(tmp_path / "store"), path, symbol="BTC/USDT", timeframe="1d", now=NOW) == {"BTC/USDT": 3}
    assert stored_ts(tmp_path / "store") == DAYS


def test_naive_times_in_a_zone_with_daylight_saving_are_converted_and_a_skipped_hour_is_refused(tmp_path):
    # 2024-03-31: Berlin skips from 02:00 to 03:00 local; 01:00 local is 00:00 UTC, 03:00 local is 01:00 UTC.
    path = tmp_path / "btc.csv"
    path.write_text("time,open,high,low,close,volume\n2024-03-31 01:00:00,1,2,0.5,1.5,1\n"
                    "2024-03-31 03:00:00,1,2,0.5,1.5,1\n")
    store = Store(tmp_path / "store")
    assert ingest_csv(store, path, symbol="X/USDT", timeframe="1h", now=NOW, timezone="Europe/Berlin") == {"X/USDT": 2}
    assert store.scan_bars("csv", "1h").collect()["ts"].to_list() == [datetime(2024, 3, 31, h, tzinfo=UTC)
                                                                      for h in (0, 1)]
    path.write_text("time,open,high,low,close,volume\n2024-03-31 01:00:00,1,2,0.5,1.5,1\n"
                    "2024-03-31 02:00:00,1,2,0.5,1.5,1\n")
    with pytest.raises(BarValidationError, match=r"line 3.*does not exist or is ambiguous in Europe/Berlin"):
        ingest_csv(store, path, symbol="Y/USDT", timeframe="1h", now=NOW, timezone="Europe/Berlin")


@pytest.mark.parametrize("scale", [1, 10**3, 10**6, 10**9], ids=["s", "ms", "us", "ns"])
def test_epochs_in_every_unit_are_the_same_instants(tmp_path, scale):
    path = write(tmp_path / "btc.csv", "time,open,high,low,close,volume", [str(int(d.timestamp()) * scale)
                                                                          for d in DAYS])
    assert ingest_csv(Store(tmp_path / "store"), path, symbol="BTC/USDT", timeframe="1d", now=NOW) == {"BTC/USDT": 3}
    assert stored_ts(tmp_path / "store") == DAYS


def test_microsecond_epochs_through_the_cli(run_cli, tmp_path):
    path = write(tmp_path / "btc.csv", "time,open,high,low,close,volume", [str(int(d.timestamp()) * 10**6)
                                                                          for d in DAYS])
    result = cli_ingest(run_cli, path, tmp_path / "store")
    assert result.returncode == 0, result.stderr
    assert "BTC/USDT: 3 new bars" in result.stdout
    assert stored_ts(tmp_path / "store") == DAYS


def test_epochs_in_mixed_units_are_refused_naming_the_line(tmp_path):
    times = [str(int(d.timestamp())) for d in DAYS]
    times[2] += "000"  # line 4 in milliseconds, the others in seconds
    path = write(tmp_path / "btc.csv", "time,open,high,low,close,volume", times)
    with pytest.raises(BarValidationError, match=r"line 4.*reads as milliseconds but line 2's \d+ as seconds"):
        ingest_csv(Store(tmp_path / "store"), path, symbol="BTC/USDT", timeframe="1d", now=NOW)


@pytest.mark.parametrize(("options", "now", "reason"), [
    ({"since": datetime(2024, 4, 1, tzinfo=UTC)}, NOW, "3 are before --start 2024-04-01T00:00:00Z"),
    ({"until": DAYS[0]}, NOW, "3 are at or after --end 2024-03-01T00:00:00Z"),
    ({}, datetime(2024, 2, 1, tzinfo=UTC), "3 are in the future (now is 2024-02-01T00:00:00Z); check the file's "
                                           "time zone"),
    ({"since": DAYS[2]}, DAYS[2] + timedelta(hours=5), "2 are before --start 2024-03-03T00:00:00Z; pass an earlier "
     "--start; 1 is the 1d candle still open at 2024-03-03T05:00:00Z (it closes at 2024-03-04T00:00:00Z"),
])
def test_an_import_that_would_store_nothing_says_why_and_how_many_rows(tmp_path, options, now, reason):
    path = write(tmp_path / "btc.csv", "time,open,high,low,close,volume", [f"{d:%Y-%m-%dT%H:%MZ}" for d in DAYS])
    with pytest.raises(FeatureStoreError, match="nothing to store") as refused:
        ingest_csv(Store(tmp_path / "store"), path, symbol="BTC/USDT", timeframe="1d", now=now, **options)
    assert f"of its 3 row(s), from 2024-03-01T00:00:00Z to 2024-03-03T00:00:00Z, {reason}" in str(refused.value)
    assert not (tmp_path / "store").exists()


def test_nothing_to_store_through_the_cli_then_a_rerun_says_it_is_stored_already(run_cli, tmp_path, hash_tree):
    path = write(tmp_path / "btc.csv", "time,open,high,low,close,volume", [f"{d:%Y-%m-%dT%H:%MZ}" for d in DAYS])
    store = tmp_path / "store"

    future = cli_ingest(run_cli, path, store, "--start", "2024-06-01")
    assert future.returncode == 1 and "Traceback" not in future.stderr
    assert "nothing to store" in future.stderr and "3 are before --start 2024-06-01" in future.stderr, future.stderr
    assert "stored 0 new bars" not in future.stdout

    assert cli_ingest(run_cli, path, store).returncode == 0
    before = hash_tree(store / "kind=bars")
    again = cli_ingest(run_cli, path, store)
    assert again.returncode == 0, again.stderr
    assert f"BTC/USDT: 0 new bars (every bar of {path} in range is stored already)" in again.stdout
    assert hash_tree(store / "kind=bars") == before


@pytest.mark.parametrize(("make", "message"), [
    (lambda tmp: tmp / "missing.csv", "CSV file {path} does not exist"),
    (lambda tmp: tmp, "CSV file {path} is a directory"),
])
def test_a_missing_file_is_reported_as_missing(run_cli, tmp_path, make, message):
    path = make(tmp_path)
    result = cli_ingest(run_cli, path, tmp_path / "store")
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: {message.format(path=path)}"


def test_an_unknown_timezone_is_a_usage_error(run_cli, tmp_path):
    result = cli_ingest(run_cli, tmp_path / "x.csv", tmp_path / "store", "--timezone", "CEST")
    assert result.returncode == 2
    assert "unknown time zone 'CEST'; use an IANA name" in result.stderr
