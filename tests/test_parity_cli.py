"""``featurestore parity``, ``stream`` and ``online get`` as a user runs them (the installed script)."""

from __future__ import annotations

import re
import shutil
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from featurestore.atomic import write_parquet_atomic
from featurestore.backfill import backfill
from featurestore.builtin_views import RESEARCH
from featurestore.ingest import ingest_synthetic
from featurestore.offline import read_features
from featurestore.store import Store

NOW = datetime(2030, 1, 1, tzinfo=UTC)
SYMBOLS = ["BTC/USDT", "ETH/USDT"]


@pytest.fixture(scope="module")
def base_store(tmp_path_factory) -> Store:
    store = Store(tmp_path_factory.mktemp("parity") / "store")
    ingest_synthetic(store, SYMBOLS, "1m", since=datetime(2024, 5, 1, tzinfo=UTC),
                     until=datetime(2024, 5, 3, tzinfo=UTC), now=NOW)
    backfill(store, RESEARCH, now=NOW, progress=False)
    return store


@pytest.fixture
def store(base_store, tmp_path) -> Store:
    return Store(shutil.copytree(base_store.root, tmp_path / "store"))


def feature_line(output: str, feature: str) -> list[str]:
    """The cells of ``feature``'s row in the printed table."""
    line = next(line for line in output.splitlines() if re.match(rf"^│ {feature}\s", line))
    return [cell.strip() for cell in line.strip("│").split("┆")]


def tamper(store: Store, symbol: str, change) -> None:
    """Rewrite the symbol's stored feature file with ``change(frame)`` applied."""
    (path,) = [p for p in (store.root / "kind=features").rglob("features.parquet")
               if f"symbol={symbol.replace('/', '%2F')}" in str(p)]
    write_parquet_atomic(change(pl.read_parquet(path)), path)


def test_parity_passes_on_a_backfilled_store(run_cli, store):
    result = run_cli("parity", "--view", "research", "--store", store.root)
    assert result.returncode == 0, result.stderr
    for feature in RESEARCH.feature_names:
        _, compared, *rest = feature_line(result.stdout, feature)
        assert rest == ["0", "0", "0.0", "0.0", "ok"] and 5000 < int(compared) <= 5760  # warm-up nulls not compared
    assert "PARITY OK: 5,760 rows compared, 0 only streamed, 0 only offline" in result.stdout

    result = run_cli("parity", "--view", "research", "--symbols", "ETH/USDT", "--from", "2024-05-02T12:00",
                     "--batch", "7", "--store", store.root)
    assert result.returncode == 0, result.stderr
    assert "PARITY OK: 720 rows compared" in result.stdout


def test_parity_fails_on_a_tampered_value_and_names_the_feature(run_cli, store):
    row = pl.int_range(pl.len()) == 1000
    tamper(store, "BTC/USDT", lambda f: f.with_columns(
        ret_3=pl.when(row).then(pl.col("ret_3") * (1 + 1e-9)).otherwise(pl.col("ret_3")),
        rv_24=pl.when(row).then(None).otherwise(pl.col("rv_24"))))
    result = run_cli("parity", "--view", "research", "--store", store.root)
    assert result.returncode == 1
    ret_3 = feature_line(result.stdout, "ret_3")
    assert ret_3[1:4] == ["5754", "1", "0"] and ret_3[-1] == "FAIL"
    assert 9e-10 < float(ret_3[5]) < 1.1e-9  # the relative difference put in
    rv_24 = feature_line(result.stdout, "rv_24")
    assert rv_24[2:4] == ["0", "1"] and rv_24[-1] == "FAIL"  # a null where the engine has a value
    assert feature_line(result.stdout, "ret_1")[-1] == "ok"
    assert "PARITY MISMATCH" in result.stdout and "failing features: ret_3, rv_24" in result.stdout


def test_parity_fails_when_offline_rows_are_missing(run_cli, store):
    tamper(store, "ETH/USDT", lambda f: f.head(f.height - 10))
    result = run_cli("parity", "--view", "research", "--store", store.root)
    assert result.returncode == 1
    assert "PARITY MISMATCH: 5,750 rows compared, 10 only streamed, 0 only offline" in result.stdout


@pytest.mark.slow
def test_stream_then_online_get_then_continue(run_cli, store, tmp_path):
    jsonl, recovery = tmp_path / "rows.jsonl", tmp_path / "recovery"
    command = ["stream", "--view", "research", "--from", "2024-05-02", "--jsonl", jsonl, "--workers", "2",
               "--recovery-dir", recovery, "--snapshot-interval", "1", "--store", store.root]
    result = run_cli(*command)
    assert result.returncode == 0, result.stderr
    assert "2 symbol(s), 2,880 bars received, 2,880 applied, 0 dropped" in result.stdout
    lines = Path(jsonl).read_text()
    assert lines.count("\n") == 2880

    result = run_cli("online", "get", "--view", "research", "--symbol", "ETH/USDT", "--store", store.root)
    assert result.returncode == 0, result.stderr
    newest = read_features(store, RESEARCH, symbols=["ETH/USDT"]).collect().row(-1, named=True)
    assert f"research ETH/USDT  ts {newest['ts'].isoformat()}  version {RESEARCH.version}" in result.stdout
    assert re.search(rf"^  ret_1\s+{re.escape(repr(newest['ret_1']))}$", result.stdout, re.M)

    result = run_cli(*command)  # recovery makes a re-run a continuation: nothing new, nothing repeated
    assert result.returncode == 0, result.stderr
    assert Path(jsonl).read_text() == lines
    assert "2,880 bars received" in result.stdout

    result = run_cli("online", "get", "--view", "research", "--symbol", "DOGE/USDT", "--store", store.root)
    assert result.returncode == 1
    assert "no online row for view 'research' and symbol(s) DOGE/USDT" in result.stderr


def test_stream_reports_user_errors_without_a_traceback(run_cli, store):
    result = run_cli("stream", "--source", "ccxt", "--view", "research", "--store", store.root)
    assert result.returncode == 1
    assert "error: --source ccxt needs --symbols" in result.stderr
    result = run_cli("stream", "--view", "research", "--symbols", "DOGE/USDT", "--store", store.root)
    assert result.returncode == 1
    assert "no stored bars for ['DOGE/USDT'] on exchange 'synthetic'" in result.stderr
