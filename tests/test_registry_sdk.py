"""The store that knows what it holds: featurestore.toml, ``featurestore apply`` and the registry, built-in
templates at any timeframe, and the Python SDK. The CLI runs as the installed script in a subprocess; the SDK
in-process on real stores."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from featurestore import FeatureStore
from featurestore.builtin_views import builtin_view
from featurestore.config import read_config
from featurestore.errors import DefinitionError
from featurestore.registry import registered

T0 = datetime(2024, 1, 1, tzinfo=UTC)
NOW = datetime(2030, 1, 1, tzinfo=UTC)

MOMENTUM = '''
import polars as pl
from featurestore.definitions import FeatureView

close = pl.col("close")
momentum = FeatureView("momentum", "1h", {{"ret_{n}": (close / close.shift({n})).log(),
                                           "vol": (close / close.shift(1)).log().rolling_std(12)}})
'''
BAD_MODULE = '''
import polars as pl
from featurestore.definitions import FeatureView

fine = FeatureView("fine", "1h", {"x": pl.col("close").shift(1)})
peeking = FeatureView("peeking", "1h", {"ok": pl.col("close"), "next_close": pl.col("close").shift(-2)})
'''


@pytest.fixture
def hourly(tmp_path, run_cli) -> Path:
    """A store with 30 days of 1h bars of two symbols (the CLI's own ingest) and a scratch directory."""
    store = tmp_path / "store"
    done = run_cli("ingest", "--store", store, "--symbols", "BTC/USDT,ETH/USDT", "--timeframe", "1h",
                   "--start", "2024-01-01", "--end", "2024-01-31")
    assert done.returncode == 0, done.stderr
    return store


def write_module(path: Path, n: int) -> Path:
    path.write_text(MOMENTUM.format(n=n))
    return path


def test_applied_views_are_found_by_name_by_every_verb_without_the_users_file(tmp_path, hourly, run_cli):
    module = write_module(tmp_path / "my_views.py", 3)
    applied = run_cli("apply", module, "--store", hourly)
    assert applied.returncode == 0, applied.stderr
    assert "momentum" in applied.stdout and "registered" in applied.stdout
    module.unlink()  # the registry alone must be enough from here on

    for args in (["backfill", "--view", "momentum"], ["parity", "--view", "momentum"],
                 ["export", "--views", "momentum", "--all-bars", "--label", "future_ret:h=1", "--out", tmp_path / "t.pq",
                  "--format", "parquet"],
                 ["stream", "--view", "momentum", "--start", "2024-01-29"],
                 ["sql", "SELECT count(*) AS n FROM features_momentum", "--format", "csv"]):
        done = run_cli(*args, "--store", hourly)
        assert done.returncode == 0, (args, done.stderr)
    assert done.stdout.splitlines()[1] == str(2 * 30 * 24)

    listed = run_cli("features", "list", "--store", hourly)
    (row,) = [line.split() for line in listed.stdout.splitlines() if line.startswith("momentum ")]
    assert row[2:5] == ["1h", "2", f"{2 * 30 * 24:,}"] and row[-1] == str(tmp_path / "my_views.py")
    assert any(line.startswith("research ") and "(not applied)" in line for line in listed.stdout.splitlines())


def test_reapplying_a_changed_module_registers_a_new_version_and_keeps_the_old_readable(tmp_path, hourly, run_cli):
    module = write_module(tmp_path / "my_views.py", 3)
    assert run_cli("apply", module, "--store", hourly).returncode == 0
    assert run_cli("backfill", "--view", "momentum", "--store", hourly).returncode == 0
    old = registered_version(hourly, "momentum")

    write_module(module, 5)
    again = run_cli("apply", module, "--store", hourly)
    assert again.returncode == 0, again.stderr
    assert "new version (features added: ret_5; removed: ret_3)" in again.stdout
    new = registered_version(hourly, "momentum")
    assert new != old
    unchanged = run_cli("apply", module, "--store", hourly)
    assert "unchanged" in unchanged.stdout

    # until the new version is backfilled, SQL keeps showing the stored one; the old one stays readable by name
    old_rows = run_cli("sql", "SELECT count(*) AS n FROM features_momentum", "--format", "csv", "--store", hourly)
    assert old_rows.stdout.splitlines()[1] == str(2 * 30 * 24)
    assert run_cli("backfill", "--view", "momentum", "--store", hourly).returncode == 0
    columns = run_cli("sql", "SELECT * FROM features_momentum LIMIT 1", "--format", "csv", "--store", hourly)
    assert "ret_5" in columns.stdout.splitlines()[0]
    versioned = run_cli("sql", f"SELECT ret_3 FROM features_momentum__{old} LIMIT 1", "--format", "csv",
                        "--store", hourly)
    assert versioned.returncode == 0, versioned.stderr
    export = run_cli("export", "--views", f"momentum@{old}", "--all-bars", "--out", tmp_path / "old.parquet",
                     "--store", hourly)
    assert export.returncode == 0, export.stderr
    assert "momentum__ret_3" in pl.read_parquet(tmp_path / "old.parquet").columns


def registered_version(store: Path, name: str) -> str:
    return json.loads((store / "registry" / f"{name}.json").read_text())["current"]


def test_apply_is_all_or_nothing_and_names_the_view_and_feature(tmp_path, hourly, run_cli):
    bad = tmp_path / "bad.py"
    bad.write_text(BAD_MODULE)
    done = run_cli("apply", bad, "--store", hourly)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "feature 'next_close' of view 'peeking'" in done.stderr and "shift(-2)" in done.stderr
    assert not (hourly / "registry").exists()  # not even the good view of the module

    first = write_module(tmp_path / "team_a.py", 3)
    second = write_module(tmp_path / "team_b.py", 4)
    assert run_cli("apply", first, "--store", hourly).returncode == 0
    before = (hourly / "registry" / "momentum.json").read_bytes()
    clash = run_cli("apply", second, "--store", hourly)
    assert clash.returncode == 1 and "nothing applied" in clash.stderr
    assert str(first) in clash.stderr and str(second) in clash.stderr
    assert (hourly / "registry" / "momentum.json").read_bytes() == before


def test_builtin_templates_bind_to_the_stores_timeframe(hourly, run_cli):
    done = run_cli("apply", "--builtin", "indicators", "--timeframe", "1h", "--store", hourly)
    assert done.returncode == 0, done.stderr
    assert "indicators_1h" in done.stdout
    assert run_cli("backfill", "--view", "indicators_1h", "--store", hourly).returncode == 0
    assert registered_version(hourly, "indicators_1h") == builtin_view("indicators", "1h").version
    typo = run_cli("apply", "--builtin", "indicator", "--store", hourly)
    assert typo.returncode == 1 and "did you mean 'indicators'" in typo.stderr


def test_init_writes_a_config_every_verb_reads_and_flags_override(tmp_path, run_cli):
    store = tmp_path / "store"
    done = run_cli("--store", store, "init", "--timeframe", "4h", "--online-store", "sqlite:///serving/online.db",
                   "--exchange", "synthetic")
    assert done.returncode == 0, done.stderr
    config = read_config(store)
    assert (config.timeframe, config.exchange, config.online_url(store)) == (
        "4h", "synthetic", f"sqlite:///{store}/serving/online.db")
    text = (store / "featurestore.toml").read_text()
    assert text.count("# ") >= 4  # commented

    ingest = run_cli("ingest", "--symbols", "BTC/USDT", "--start", "2024-01-01", "--end", "2024-02-01",
                     "--store", store)  # the store's timeframe: 4h bars
    assert ingest.returncode == 0 and "186 new bars" in ingest.stdout
    hourly = run_cli("ingest", "--symbols", "BTC/USDT", "--timeframe", "1h", "--start", "2024-01-01",
                     "--end", "2024-01-02", "--store", store)  # the flag wins
    assert "24 new bars" in hourly.stdout
    assert run_cli("apply", "--builtin", "research", "--store", store).returncode == 0  # research_4h
    assert run_cli("stream", "--view", "research_4h", "--store", store).returncode == 0
    assert (store / "serving" / "online.db").is_file() and not (store / "online.sqlite").exists()

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "featurestore.toml").write_text('[store]\ntimeframe = "1h"\nexchnage = "x"\n')
    refused = run_cli("validate", "--store", broken)
    assert refused.returncode == 1 and "unknown setting(s) exchnage" in refused.stderr


def test_the_sdk_from_ingest_to_a_scored_row(tmp_path, monkeypatch):
    fs = FeatureStore.init(tmp_path / "store", timeframe="1h", clock=lambda: NOW)
    fs.ingest(symbols=["BTC/USDT", "ETH/USDT"], since=T0, until=T0 + timedelta(days=60))
    fs.apply(builtin="research")
    fs.backfill("research_1h")
    train = fs.get_historical_features(features=["research_1h:ret_1", "research_1h:rv_24"], all_bars=True,
                                       labels=["future_ret:h=1"], symbols=["BTC/USDT"])
    assert train.columns[:5] == ["symbol", "event_ts", "research_1h__ts", "research_1h__ret_1", "research_1h__rv_24"]
    assert train.height == 60 * 24 and train["future_ret_h1"].null_count() == 1

    result = fs.train(features=["research_1h:ret_1", "research_1h:ret_3", "research_1h:rv_24"],
                      label="future_ret:h=1", name="sdk_reg", promote=True, folds=2)
    assert [m.version for m in fs.models("sdk_reg") if m.production] == [result.version]
    assert result.meta.feature_names == ("research_1h__ret_1", "research_1h__ret_3", "research_1h__rv_24")

    fs.stream("research_1h", start=T0 + timedelta(days=59))
    online = fs.get_online_features(["BTC/USDT"], ["research_1h:ret_1"])
    assert online["research_1h__ts"].item() == T0 + timedelta(days=60)
    scored = fs.score(["BTC/USDT", "ETH/USDT"], as_of=T0 + timedelta(days=60))
    assert scored.columns[:3] == ["symbol", "ts", "score"] and scored.height == 2
    assert scored["research_1h__ret_1"][0] == online["research_1h__ret_1"].item()

    monkeypatch.setenv("FEATURESTORE_SIGNING_KEY", "k")
    (signal,) = fs.signals(["BTC/USDT"], as_of=T0 + timedelta(days=60))
    assert signal["score"] == scored["score"][0] and signal["model"] == "sdk_reg"
    assert fs.sql("SELECT count(*) AS n FROM features_research_1h")["n"].item() == 2 * 60 * 24
    with pytest.raises(DefinitionError, match="did you mean 'ret_1'"):
        fs.get_online_features(["BTC/USDT"], ["research_1h:ret1"])
    assert registered(fs.store, "research_1h")["current"] == builtin_view("research", "1h").version
    assert os.environ["FEATURESTORE_SIGNING_KEY"] == "k"
