"""Ingest and resample one symbol at a time: the same stored files as one batch of every symbol, and a conflict
(or a damaged fine file) in any symbol still writes nothing."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from conftest import NOW, store_with_bars
from featurestore.errors import DamagedFileError, StoreConflictError
from featurestore.ingest import closed_bars, ingest_bars, ingest_resampled, ingest_synthetic
from featurestore.sources.resample import resample_bars
from featurestore.sources.synthetic import Regime, synthetic_bars
from featurestore.store import BarSeries, Store

SYMBOLS = ["BTC/USDT", "ETH/USDT", "BTC/USDT:USDT"]
SINCE, UNTIL = datetime(2023, 12, 30, tzinfo=UTC), datetime(2024, 1, 3, 7, tzinfo=UTC)  # two year files each


@pytest.mark.parametrize(("timeframe", "seed", "regime"), [
    ("1h", 7, None),
    ("5m", 3, Regime(datetime(2024, 1, 1, 12, tzinfo=UTC), volatility=2.0, drift=-0.01)),
], ids=["1h", "5m-regime"])
def test_symbol_by_symbol_stores_the_same_bytes_as_one_batch(tmp_path, hash_tree, run_cli, timeframe, seed, regime):
    batch = Store(tmp_path / "batch")
    bars = closed_bars(synthetic_bars(SYMBOLS, timeframe, since=SINCE, until=UNTIL, seed=seed, regime=regime),
                       timeframe, NOW)
    ingest_bars(batch, bars, exchange="synthetic", timeframe=timeframe, source="one batch")
    regime_args = () if regime is None else ("--regime-at", regime.at.isoformat(), "--regime-volatility",
                                             str(regime.volatility), "--regime-drift", str(regime.drift))
    per_symbol = tmp_path / "per_symbol"
    result = run_cli("ingest", "--store", per_symbol, "--symbols", ",".join(SYMBOLS), "--timeframe", timeframe,
                     "--start", SINCE.isoformat(), "--end", UNTIL.isoformat(), "--seed", str(seed), *regime_args)
    assert result.returncode == 0, result.stderr

    assert hash_tree(Store(per_symbol).bars_root) == hash_tree(batch.bars_root)


def test_resampling_symbol_by_symbol_stores_the_same_bytes_as_one_batch(tmp_path, hash_tree):
    stores = [Store(tmp_path / name) for name in ("batch", "per_symbol")]
    for store in stores:
        ingest_synthetic(store, SYMBOLS, "1h", since=SINCE, until=UNTIL, now=NOW)
    batch, per_symbol = stores
    coarse = closed_bars(resample_bars(batch.scan_bars("synthetic", "1h"), "1h", "4h"), "4h", NOW)
    ingest_bars(batch, coarse, exchange="synthetic", timeframe="4h", source="one batch")
    assert ingest_resampled(per_symbol, exchange="synthetic", from_timeframe="1h", timeframe="4h", now=NOW) == {
        symbol: coarse.filter(symbol=symbol).height for symbol in SYMBOLS}

    assert hash_tree(per_symbol.bars_root) == hash_tree(batch.bars_root)


def test_a_conflict_in_a_later_symbol_writes_no_earlier_symbol(tmp_path, run_cli, hash_tree):
    store = store_with_bars(tmp_path / "store", ["ETH/USDT"])  # seed 7; BTC/USDT not stored yet
    before = hash_tree(store.root)

    result = run_cli("ingest", "--store", store.root, "--symbols", "BTC/USDT,ETH/USDT", "--timeframe", "1h",
                     "--start", "2024-01-01", "--end", "2024-01-09", "--seed", "8")

    assert result.returncode == 1
    assert "disagree with stored bars" in result.stderr and "symbol ETH/USDT" in result.stderr
    assert "Nothing was written" in result.stderr
    assert hash_tree(store.root) == before
    with pytest.raises(StoreConflictError, match="Nothing was written"):
        ingest_synthetic(store, ["BTC/USDT", "ETH/USDT"], "1h", since=SINCE, until=UNTIL, now=NOW, seed=8)
    assert hash_tree(store.root) == before


def test_resampling_writes_no_earlier_symbol_on_a_later_conflict_or_damaged_file(tmp_path, hash_tree):
    store = store_with_bars(tmp_path / "store", ["BTC/USDT", "ETH/USDT"])  # BTC/USDT is resampled first
    eth = closed_bars(resample_bars(store.scan_series(BarSeries("synthetic", "1h", "ETH/USDT")), "1h", "4h"), "4h", NOW)
    ingest_bars(store, eth.head(1).drop("fine_bars").with_columns(volume=eth["volume"][0] * 2), exchange="synthetic",
                timeframe="4h", source="an older resample")
    before = hash_tree(store.root)

    with pytest.raises(StoreConflictError, match=r"symbol ETH/USDT.*Nothing was written.*resample again"):
        ingest_resampled(store, exchange="synthetic", from_timeframe="1h", timeframe="4h", now=NOW)
    assert hash_tree(store.root) == before

    fine = store.bar_files(BarSeries("synthetic", "1h", "ETH/USDT"))[0]
    fine.write_bytes(fine.read_bytes()[:500])  # cut short: its footer is gone
    before = hash_tree(store.root)
    with pytest.raises(DamagedFileError, match="symbol=ETH%2FUSDT"):
        ingest_resampled(store, exchange="synthetic", from_timeframe="1h", timeframe="4h", now=NOW)
    assert hash_tree(store.root) == before


def test_a_symbol_named_twice_is_ingested_once(tmp_path):
    store = Store(tmp_path / "store")
    assert ingest_synthetic(store, ["BTC/USDT", "BTC/USDT"], "1h", since=SINCE, until=UNTIL, now=NOW) == {
        "BTC/USDT": 103}
