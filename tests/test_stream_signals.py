"""Scoring inside the dataflow: every closed bar's feature row becomes a signed signal in the same flow.

Run as users run it (``featurestore stream --model``, a subprocess): the signals' scores equal LightGBM's
own prediction on the backfilled rows, sides follow the thresholds and positions chain; a re-run adds
nothing, and a run stopped part-way then resumed writes the very file one run writes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from datetime import UTC, datetime, timedelta

import lightgbm as lgb
import polars as pl
import pytest

from conftest import FEATURESTORE
from featurestore.backfill import backfill
from featurestore.builtin_views import DAILY_TREND, INDICATORS, RESEARCH
from featurestore.export import ExportOptions, training_set
from featurestore.ingest import ingest_synthetic
from featurestore.materialize import materialize_latest
from featurestore.offline import read_features
from featurestore.online.sqlite import SqliteOnlineStore
from featurestore.store import Store
from serving.audit import verify_log
from serving.signals import Thresholds, side_for, verify_signal
from training.labels import parse_label
from training.model import ModelParams
from training.registry import models_root, promote
from training.train import train_model

NOW = datetime(2030, 1, 1, tzinfo=UTC)
SINCE, START, UNTIL = (datetime(2024, 5, d, tzinfo=UTC) for d in (1, 3, 4))
SYMBOLS = ["BTC/USDT", "ETH/USDT"]
KEY = "stream-signal-test-key"
THRESHOLD = 2e-4
MINUTE = timedelta(minutes=1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Store:
    """Three days of 1m bars for two symbols, backfilled for ``research`` and ``indicators``, and two months of
    1d bars for ``daily_trend`` (warm by May); production models ``reg`` (research), ``both`` (research +
    indicators) and ``demo`` (research + daily_trend, as the demo's), trained on the first two days."""
    store = Store(tmp_path_factory.mktemp("stream_signals") / "store")
    ingest_synthetic(store, SYMBOLS, "1m", since=SINCE, until=UNTIL, now=NOW)
    ingest_synthetic(store, SYMBOLS, "1d", since=datetime(2024, 3, 1, tzinfo=UTC), until=UNTIL, now=NOW)
    for view in (RESEARCH, INDICATORS, DAILY_TREND):
        backfill(store, view, now=NOW, progress=False)
    params = ModelParams(num_threads=1, num_boost_round=30, min_data_in_leaf=40)
    for name, views in (("reg", [RESEARCH]), ("both", [RESEARCH, INDICATORS]), ("demo", [RESEARCH, DAILY_TREND])):
        result = train_model(store, views=views, label=parse_label("future_ret:h=1"), name=name, end=START,
                             models_root=models_root(store), now=NOW, folds=2, threshold=THRESHOLD, params=params)
        promote(models_root(store), name, result.version)
    return store


@pytest.fixture
def store(trained, tmp_path) -> Store:
    return Store(shutil.copytree(trained.root, tmp_path / "store"))


def stream(store: Store, *args: object, key: str | None = KEY) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("FEATURESTORE_HOME", "FEATURESTORE_SIGNING_KEY")}
    if key is not None:
        env["FEATURESTORE_SIGNING_KEY"] = key
    command = [FEATURESTORE, "stream", "--view", "research", "--symbols", ",".join(SYMBOLS), "--store", store.root,
               *args]
    return subprocess.run(list(map(str, command)), capture_output=True, text=True, env=env, timeout=180, check=False)


def signals(store: Store) -> list[dict]:
    """The signals of a replay: in the replay log, marked so."""
    got = [json.loads(line) for line in store.replay_audit_path.read_text().splitlines()]
    assert {s["mode"] for s in got} == {"replay"} and not store.audit_path.exists()
    return got


def production_booster(store: Store, name: str) -> lgb.Booster:
    version = json.loads((models_root(store) / name / "production").read_text())["version"]
    return lgb.Booster(model_file=str(models_root(store) / name / version / "model.txt"))


@pytest.mark.slow
def test_every_streamed_row_becomes_the_signal_lightgbm_would_give(store):
    done = stream(store, "--from", START.isoformat(), "--model", "reg")

    assert done.returncode == 0, done.stderr
    assert "signals: model reg " in done.stdout and ": 2,880 signed, 0 refused" in done.stdout
    got = signals(store)
    assert len(got) == 2 * 1440 and all(verify_signal(s, key=KEY.encode()) for s in got)
    rows = read_features(store, RESEARCH).filter(pl.col("ts") > START).sort("symbol", "ts").collect()
    booster = production_booster(store, "reg")
    expected = booster.predict(rows.select(name.split("__", 1)[1] for name in booster.feature_name()).to_numpy())
    thresholds = Thresholds(THRESHOLD, -THRESHOLD)
    for symbol in SYMBOLS:
        mine = [s for s in got if s["symbol"] == symbol]
        expected_ts = rows.filter(pl.col("symbol") == symbol)["ts"].to_list()
        assert [datetime.fromisoformat(s["ts"]) for s in mine] == expected_ts  # every row, in time order
        assert [s["previous_side"] for s in mine] == ["FLAT"] + [s["side"] for s in mine[:-1]]
        assert all(s["side"] == side_for(s["score"], thresholds) for s in mine)
    by_key = {(s["symbol"], s["ts"]): s["score"] for s in got}
    scores = [by_key[(symbol, ts.isoformat())] for symbol, ts in rows.select("symbol", "ts").iter_rows()]
    assert scores == expected.tolist()  # the float64 ONNX graph gives LightGBM's own prediction, exactly


@pytest.mark.slow
def test_a_rerun_adds_nothing_and_a_resumed_run_writes_what_one_run_wrote(store, tmp_path):
    whole = stream(store, "--from", START.isoformat(), "--model", "reg", "--audit", tmp_path / "whole.jsonl")
    assert whole.returncode == 0, whole.stderr
    again = stream(store, "--from", START.isoformat(), "--model", "reg", "--audit", tmp_path / "whole.jsonl")
    assert again.returncode == 0 and ": 0 signed, 0 refused" in again.stdout

    part = stream(store, "--from", START.isoformat(), "--until", "2024-05-03T10:00", "--model", "reg",
                  "--audit", tmp_path / "parts.jsonl")
    assert part.returncode == 0 and ": 1,200 signed" in part.stdout  # 2 x 600 bars: rows until 10:00 inclusive
    rest = stream(store, "--from", START.isoformat(), "--model", "reg", "--audit", tmp_path / "parts.jsonl",
                  "--batch", "1")
    assert rest.returncode == 0 and ": 1,680 signed" in rest.stdout
    # The same decisions; symbols interleave by batch, each symbol's signals keep time order. Only the chain
    # (seq, prev, and so the signature) follows the interleaving of each log; both logs verify.
    parts, whole = ([json.loads(line) for line in (tmp_path / name).read_text().splitlines()]
                    for name in ("parts.jsonl", "whole.jsonl"))

    def decisions(log: list[dict], symbol: str) -> list[dict]:
        return [{k: v for k, v in s.items() if k not in ("seq", "prev", "signature")} for s in log
                if s["symbol"] == symbol]

    for symbol in SYMBOLS:
        assert decisions(parts, symbol) == decisions(whole, symbol)
    assert len(parts) == len(whole) == 2 * 1440
    for name in ("parts.jsonl", "whole.jsonl"):
        assert verify_log(tmp_path / name, key=KEY.encode()).problems == []


@pytest.mark.slow
@pytest.mark.parametrize(("name", "other"), [("both", INDICATORS), ("demo", DAILY_TREND)])
def test_a_replay_reads_the_other_view_as_of_each_moment_as_the_training_join_does(store, name, other):
    with SqliteOnlineStore(store.online_path) as online:  # the online store: rows from after every replayed bar
        materialize_latest(store, other, SYMBOLS, online, now=NOW)

    done = stream(store, "--from", START.isoformat(), "--model", name)

    assert done.returncode == 0, done.stderr
    joined = training_set(store, [RESEARCH, other], options=ExportOptions(all_bars=True, start=START + MINUTE))
    assert joined.height == 2 * 1440 and joined[f"{other.name}__ts"].null_count() == 0  # the join fills every row
    assert f"signals: model {name} " in done.stdout and ": 2,880 signed, 0 refused" in done.stdout
    got = {(s["symbol"], s["ts"]): s for s in signals(store)}
    booster = production_booster(store, name)
    expected = booster.predict(joined.select(booster.feature_name()).to_numpy())
    for (symbol, ts, other_ts), score in zip(joined.select("symbol", "event_ts", f"{other.name}__ts").iter_rows(),
                                             expected.tolist(), strict=True):
        signal = got[(symbol, ts.isoformat())]
        assert signal["views"][other.name]["ts"] == other_ts.isoformat()  # the row the join used, not the newest
        assert signal["score"] == score


@pytest.mark.slow
def test_a_replay_refuses_exactly_what_the_join_with_the_same_ttl_leaves_empty(store):
    done = stream(store, "--from", START.isoformat(), "--model", "demo", "--max-age", "research=1m,daily_trend=1h")

    assert done.returncode == 0, done.stderr
    joined = training_set(store, [RESEARCH, DAILY_TREND], options=ExportOptions(
        all_bars=True, start=START + MINUTE, ttl={"research": MINUTE, "daily_trend": timedelta(hours=1)}))
    empty = joined["daily_trend__ts"].null_count()
    assert 0 < empty < joined.height
    assert re.search(rf": {joined.height - empty:,} signed, {empty:,} refused \(first: refusing to score: no offline "
                     rf"row of view 'daily_trend' for (BTC|ETH)/USDT at most 1:00:00 before 2024-05-03T01:01:00\+00:00 "
                     rf"\(the training join had none either\)\)", done.stdout), done.stdout
    filled = joined.filter(pl.col("daily_trend__ts").is_not_null())
    assert sorted((s["symbol"], s["ts"]) for s in signals(store)) == sorted(
        (symbol, ts.isoformat()) for symbol, ts in filled.select("symbol", "event_ts").iter_rows())


def test_a_model_that_cannot_score_the_view_is_refused_before_the_flow_starts(store):
    other_view = stream(store, "--model", "reg", "--view", "indicators")
    assert other_view.returncode == 1
    assert "model reg " in other_view.stderr and "uses views ['research'], not 'indicators'" in other_view.stderr
    unsigned = stream(store, "--model", "reg", key=None)
    assert unsigned.returncode == 1 and "set FEATURESTORE_SIGNING_KEY" in unsigned.stderr
    assert not store.audit_path.exists() and not store.replay_audit_path.exists()
    store.replay_audit_path.parent.mkdir()
    store.replay_audit_path.write_bytes(b'{"seq": 1, "seq": 2}\n')  # a damaged log: a clear error, not a crash
    damaged = stream(store, "--model", "reg")
    assert damaged.returncode == 1 and "Traceback" not in damaged.stderr
    assert f"error: refusing to append to {store.replay_audit_path}: it does not verify: {store.replay_audit_path} " \
           f"line 1: key 'seq' appears twice" in damaged.stderr




def test_a_model_trained_on_another_version_of_the_view_is_refused_before_the_flow_starts(store, tmp_path):
    definitions = tmp_path / "my_views.py"  # the view the model was trained on, redefined: another version
    definitions.write_text("import polars as pl\nfrom featurestore.definitions import FeatureView\n"
                           "RESEARCH = FeatureView('research', '1m', {'ret_1': (pl.col('close') / pl.col('close')"
                           ".shift(1)).log()})\n")

    done = stream(store, "--definitions", definitions, "--model", "reg")

    assert done.returncode == 1
    version = re.search(r"streaming view research v(\w+)", done.stdout)
    assert version is None or version[1] != RESEARCH.version
    assert re.search(rf"error: model reg \S+ was trained on view 'research' version {RESEARCH.version}, the definitions "
                     r"are version \w+: retrain, or stream the definitions it was trained on", done.stderr), done.stderr
    assert "Traceback" not in done.stderr
    assert not store.audit_path.exists() and not store.replay_audit_path.exists() and not store.online_path.exists()
