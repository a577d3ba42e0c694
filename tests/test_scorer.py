"""The scorer: predictions equal LightGBM's own, the skew guard refuses what it must, models load from the registry."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import lightgbm as lgb
import numpy as np
import polars as pl
import pytest
from fixtures.toy_model import write_toy_model

from featurestore.backfill import backfill
from featurestore.builtin_views import DAILY_TREND
from featurestore.definitions import FeatureView
from featurestore.errors import (
    FeatureStoreError,
    FutureFeaturesError,
    MissingFeaturesError,
    ModelRegistryError,
    NonFiniteFeaturesError,
    StaleFeaturesError,
    VersionSkewError,
)
from featurestore.ingest import ingest_resampled, ingest_synthetic
from featurestore.materialize import materialize_latest
from featurestore.offline import read_features
from featurestore.online import OnlineRow
from featurestore.online.sqlite import SqliteOnlineStore
from featurestore.store import Store
from serving.scorer import Scorer, load_model, open_scorer, resolve_model_dir
from training.artifact import ModelMeta
from training.labels import parse_label
from training.model import ModelParams
from training.onnx_export import run_onnx, to_onnx_float32
from training.registry import models_root, promote
from training.train import train_model

T = datetime(2024, 5, 1, 12, tzinfo=UTC)
# Inputs of two views, interleaved (so "fast" is not one contiguous block of the model's input row).
COLUMNS = [("fast", "x0"), ("fast", "x1"), ("slow", "y0"), ("fast", "x2"), ("slow", "y1")]
FAST_FEATURES, SLOW_FEATURES = ["x0", "x1", "x2"], ["y0", "y1"]


def training_rows(n: int = 4000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Five inputs; input 1 ("fast__x1") is missing on 5% of rows, the others never; input 4 is discrete."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 5))
    X[:, 4] = np.round(X[:, 4] * 3)
    X[rng.random(n) < 0.05, 1] = np.nan
    y = X[:, 0] + 0.5 * np.nan_to_num(X[:, 1]) - 0.2 * X[:, 4] + rng.normal(scale=0.1, size=n)
    return X, y


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """(model directory, booster): 100 trees over the two views, TTL 1h (fast) and 1d (slow)."""
    path = tmp_path_factory.mktemp("toy") / "model"
    X, y = training_rows()
    booster = write_toy_model(path, X=X, y=y, columns=COLUMNS, trees=100, ttl_seconds={"fast": 3600, "slow": 86400})
    return path, booster


def online_rows(X: np.ndarray, symbols: list[str], ts: datetime = T, versions: dict | None = None) -> list[OnlineRow]:
    """The rows of both views holding X's values (NaN written as null)."""
    versions = {"fast": "v1", "slow": "v1", **(versions or {})}
    rows = []
    for symbol, values in zip(symbols, X, strict=True):
        named = {f"{view}__{feature}": None if np.isnan(v) else float(v)
                 for (view, feature), v in zip(COLUMNS, values, strict=True)}
        for view, features in (("fast", FAST_FEATURES), ("slow", SLOW_FEATURES)):
            rows.append(OnlineRow(view, symbol, ts, versions[view], {f: named[f"{view}__{f}"] for f in features}, ts))
    return rows


@pytest.fixture
def scorer(toy, tmp_path):
    with SqliteOnlineStore(Store(tmp_path).online_path):
        pass
    with Scorer(load_model(toy[0]), SqliteOnlineStore(Store(tmp_path).online_path, readonly=True)) as scorer:
        yield scorer


def write(tmp_path, rows: list[OnlineRow]) -> None:
    with SqliteOnlineStore(Store(tmp_path).online_path) as online:
        online.put_many(rows)


def test_batch_and_single_scores_equal_lightgbm(toy, scorer, tmp_path):
    _, booster = toy
    X, _ = training_rows(300, seed=1)
    X[::5, 1] = np.nan  # missing in training: fed as NaN
    symbols = [f"S{i:03d}/USDT" for i in range(len(X))]
    write(tmp_path, online_rows(X, symbols))
    expected = booster.predict(X)
    scores = scorer.score(symbols, now=T)
    assert [s.symbol for s in scores] == symbols
    assert np.abs(np.array([s.score for s in scores]) - expected).max() <= 1e-12
    singles = [scorer.score([symbol], now=T)[0].score for symbol in symbols[:50]]
    assert singles == [s.score for s in scores[:50]]
    first = scores[0]
    assert first.missing == ("fast__x1",) and first.features["fast__x1"] is None
    assert first.features["slow__y1"] == X[0, 4] and list(first.features) == [f"{v}__{f}" for v, f in COLUMNS]
    assert first.ts == T and set(first.rows) == {"fast", "slow"} and scores[1].missing == ()


def test_inputs_on_split_thresholds_route_like_lightgbm(toy, scorer, tmp_path):
    _, booster = toy
    thresholds = []

    def walk(node: dict) -> None:
        if "split_index" in node:
            thresholds.append((node["split_feature"], node["threshold"]))
            walk(node["left_child"])
            walk(node["right_child"])

    for tree in booster.dump_model()["tree_info"]:
        walk(tree["tree_structure"])
    X, _ = training_rows(200, seed=2)
    for i in range(len(X)):
        feature, threshold = thresholds[i % len(thresholds)]
        X[i, feature] = threshold
    symbols = [f"T{i}" for i in range(len(X))]
    write(tmp_path, online_rows(X, symbols))
    got = np.array([s.score for s in scorer.score(symbols, now=T)])
    assert np.abs(got - booster.predict(X)).max() <= 1e-12


def test_never_missing_inputs_are_read_from_the_model_text(toy):
    model, booster = load_model(toy[0]), toy[1]
    kinds: dict[str, set] = {}

    def walk(node: dict) -> None:
        if "split_index" in node:
            kinds.setdefault(model.feature_names[node["split_feature"]], set()).add(node["missing_type"])
            walk(node["left_child"])
            walk(node["right_child"])

    for tree in booster.dump_model()["tree_info"]:
        walk(tree["tree_structure"])
    assert model.no_missing == {name for name, types in kinds.items() if "None" in types}
    assert "fast__x1" not in model.no_missing and "fast__x0" in model.no_missing


def test_version_mismatch_names_the_view_and_both_versions(scorer, tmp_path):
    X, _ = training_rows(2, seed=3)
    write(tmp_path, online_rows(X, ["BTC/USDT", "ETH/USDT"], versions={"slow": "v2"}))
    with pytest.raises(VersionSkewError) as caught:
        scorer.score(["BTC/USDT", "ETH/USDT"], now=T)
    message = str(caught.value)
    assert "view 'slow' for BTC/USDT: the online row is version v2" in message
    assert "trained on version v1" in message and "ETH/USDT" in message  # every problem is listed


def test_stale_rows_are_refused_past_the_ttl_or_the_max_age(toy, scorer, tmp_path):
    X, _ = training_rows(1, seed=4)
    write(tmp_path, online_rows(X, ["BTC/USDT"]))
    assert scorer.score(["BTC/USDT"], now=T + timedelta(hours=1))  # exactly the TTL: still fresh
    with pytest.raises(StaleFeaturesError, match=r"view 'fast' for BTC/USDT: the online row at 2024-05-01T12:00:00\+00:00 "
                                                 r"is 1:00:01 old .* older than the max age 1:00:00"):
        scorer.score(["BTC/USDT"], now=T + timedelta(hours=1, seconds=1))
    relaxed = Scorer(load_model(toy[0]), SqliteOnlineStore(Store(tmp_path).online_path, readonly=True),
                     max_age={"fast": timedelta(hours=2)})
    assert relaxed.score(["BTC/USDT"], now=T + timedelta(hours=1, seconds=1))
    with pytest.raises(StaleFeaturesError, match="view 'slow'"):
        relaxed.score(["BTC/USDT"], now=T + timedelta(days=1, seconds=1))
    strict = Scorer(load_model(toy[0]), SqliteOnlineStore(Store(tmp_path).online_path, readonly=True), max_age=timedelta(seconds=30))
    with pytest.raises(StaleFeaturesError, match="max age 0:00:30"):
        strict.score(["BTC/USDT"], now=T + timedelta(seconds=31))
    with pytest.raises(FeatureStoreError, match=r"max age given for \['daily'\]"):
        Scorer(load_model(toy[0]), SqliteOnlineStore(Store(tmp_path).online_path, readonly=True), max_age={"daily": timedelta(1)})


def test_a_row_newer_than_the_scoring_time_is_refused_and_given_rows_replace_the_stores(scorer, tmp_path):
    X, _ = training_rows(2, seed=6)
    write(tmp_path, online_rows(X[:1], ["BTC/USDT"]))
    with pytest.raises(FutureFeaturesError, match=r"view 'fast' for BTC/USDT: the online row at 2024-05-01T12:00:00"
                                                  r"\+00:00 is after the scoring time 2024-05-01T11:59:00\+00:00"):
        scorer.score(["BTC/USDT"], now=T - timedelta(minutes=1))
    # The dataflow passes the row it has just computed for its view; the other view comes from the store.
    fresh = {row.view: row for row in online_rows(X[1:], ["BTC/USDT"], ts=T + timedelta(minutes=5))}
    (score,) = scorer.score(["BTC/USDT"], now=T + timedelta(minutes=5), given={"fast": {"BTC/USDT": fresh["fast"]}})
    assert score.rows["fast"] is fresh["fast"] and score.rows["slow"].ts == T
    expected = np.where([v == "fast" for v, _ in COLUMNS], X[1], X[0])
    assert np.array_equal(np.array(score.inputs), expected, equal_nan=True)


def test_a_missing_view_row_or_symbol_is_refused(scorer, tmp_path):
    X, _ = training_rows(1, seed=5)
    write(tmp_path, [row for row in online_rows(X, ["BTC/USDT"]) if row.view == "fast"])
    with pytest.raises(MissingFeaturesError, match="no online row of view 'slow' for BTC/USDT"):
        scorer.score(["BTC/USDT"], now=T)
    with pytest.raises(MissingFeaturesError, match="no online row of view 'fast' for XRP/USDT"):
        scorer.score(["XRP/USDT"], now=T)


def test_nulls_pass_as_nan_only_where_training_saw_them(toy, scorer, tmp_path):
    X, _ = training_rows(1, seed=6)
    X[0, 1] = np.nan  # fast__x1: missing in training
    write(tmp_path, online_rows(X, ["BTC/USDT"]))
    (score,) = scorer.score(["BTC/USDT"], now=T)
    assert score.missing == ("fast__x1",) and score.score == pytest.approx(toy[1].predict(X)[0], abs=1e-12)
    X[0, 0] = np.nan  # fast__x0: never missing in training, LightGBM would read it as 0
    write(tmp_path, online_rows(X, ["BTC/USDT"], ts=T + timedelta(minutes=1)))
    with pytest.raises(MissingFeaturesError, match="view 'fast' for BTC/USDT: feature 'x0' is null and model toy never "
                                                   "saw it missing"):
        scorer.score(["BTC/USDT"], now=T + timedelta(minutes=1))


@pytest.mark.parametrize("value", [np.inf, -np.inf])
@pytest.mark.parametrize("symbols", [["BTC/USDT"], ["ETH/USDT", "BTC/USDT"]])  # the one-symbol path and a batch
def test_infinite_values_are_refused_naming_view_symbol_and_feature(scorer, tmp_path, value, symbols):
    X, _ = training_rows(2, seed=8)
    X[1, 4] = value  # slow__y1 of BTC/USDT (a feature never missing in training)
    X[1, 1] = value  # fast__x1 of BTC/USDT (one the model did see missing: inf is no null either)
    write(tmp_path, online_rows(X, ["ETH/USDT", "BTC/USDT"]))
    with pytest.raises(NonFiniteFeaturesError) as caught:
        scorer.score(symbols, now=T)
    message = str(caught.value)
    assert f"view 'slow' for BTC/USDT: feature 'y1' is {value}, not a finite number" in message
    assert f"view 'fast' for BTC/USDT: feature 'x1' is {value}, not a finite number" in message
    assert "ETH/USDT" not in message
    (given,) = scorer.score(["ETH/USDT"], now=T)  # the other symbol alone scores
    assert given.missing == ()


def test_a_row_without_a_feature_is_skew(scorer, tmp_path):
    write(tmp_path, [OnlineRow("fast", "BTC/USDT", T, "v1", {"x0": 1.0, "x2": 1.0}, T),
                     OnlineRow("slow", "BTC/USDT", T, "v1", {"y0": 1.0, "y1": 1.0}, T)])
    with pytest.raises(VersionSkewError, match=r"view 'fast' for BTC/USDT: the online row \(version v1\) has no "
                                               r"feature\(s\) \['x1'\]"):
        scorer.score(["BTC/USDT"], now=T)


def test_float32_models_are_fed_float32(toy, tmp_path):
    path, booster = toy
    model32 = tmp_path / "model32"
    model32.mkdir()
    (model32 / "model.txt").write_text((path / "model.txt").read_text())
    onnx32 = to_onnx_float32(booster).SerializeToString()
    (model32 / "model.onnx").write_bytes(onnx32)
    meta = ModelMeta.read(path)
    replace(meta, onnx=replace(meta.onnx, input_dtype="float32")).write(model32)
    X, _ = training_rows(100, seed=7)
    write(tmp_path, online_rows(X, [f"S{i}" for i in range(100)]))
    with Scorer(load_model(model32), SqliteOnlineStore(Store(tmp_path).online_path, readonly=True)) as scorer:
        got = [s.score for s in scorer.score([f"S{i}" for i in range(100)], now=T)]
    assert got == run_onnx(onnx32, X, "float32").tolist()
    meta.write(model32)  # says float64, the graph takes float32
    with pytest.raises(ModelRegistryError, match=r"takes 'input' tensor\(float\), but meta.json says 'input' float64"):
        Scorer(load_model(model32), SqliteOnlineStore(Store(tmp_path).online_path, readonly=True))


def test_model_directories_and_registry_names(toy, tmp_path):
    store = Store(tmp_path / "store")
    with pytest.raises(ModelRegistryError, match="has no production version"):
        resolve_model_dir(store, "toy")
    with pytest.raises(ModelRegistryError, match=r"missing meta\.json, model\.onnx, model\.txt"):
        load_model(tmp_path)
    assert resolve_model_dir(store, str(toy[0])) == toy[0]
    with pytest.raises(ModelRegistryError, match="--version applies to a model name"):
        resolve_model_dir(store, str(toy[0]), version="x")


# --- a model trained by the pipeline, its views materialized from the offline store ----------------

T0 = datetime(2024, 1, 1, tzinfo=UTC)
close = pl.col("close")
HOURLY = FeatureView("hourly", "1h", {"ret_1": (close / close.shift(1)).log(), "ret_6": (close / close.shift(6)).log(),
                                      "rv_12": (close / close.shift(1)).log().rolling_std(12)})
SYMBOLS = ["BTC/USDT", "ETH/USDT"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Store:
    """Two symbols x 45 days of 1h bars, views hourly + daily_trend, a regressor and a classifier in production."""
    store = Store(tmp_path_factory.mktemp("trained") / "store")
    now = T0 + timedelta(days=45)
    ingest_synthetic(store, SYMBOLS, "1h", since=T0, until=now, now=now, seed=5)
    ingest_resampled(store, exchange="synthetic", from_timeframe="1h", timeframe="1d", now=now)
    for view in (HOURLY, DAILY_TREND):
        backfill(store, view, now=now, progress=False)
    for name, kind, label in (("reg", "regressor", "future_ret:h=1"),
                              ("cls", "classifier", "triple_barrier:h=6,pt=1.5,sl=1.5,atr=14")):
        result = train_model(store, views=[HOURLY, DAILY_TREND], label=parse_label(label), name=name,
                             models_root=models_root(store), now=now, kind=kind, folds=2, threshold=2e-4,
                             params=ModelParams(kind=kind, num_threads=1, num_boost_round=40, min_data_in_leaf=40))
        promote(models_root(store), name, result.version)
    with SqliteOnlineStore(store.online_path) as online:
        for view in (HOURLY, DAILY_TREND):
            assert materialize_latest(store, view, SYMBOLS, online, now=now) == 2
    return store


@pytest.mark.parametrize("name", ["reg", "cls"])
def test_a_trained_model_scores_its_materialized_rows_like_lightgbm(trained, name):
    newest = {view.name: read_features(trained, view).collect().sort("ts").group_by("symbol").last().sort("symbol")
              for view in (HOURLY, DAILY_TREND)}
    now = newest["hourly"]["ts"].max()
    with open_scorer(trained, name) as scorer:
        model = scorer.model
        scores = scorer.score(SYMBOLS, now=now)
    assert model.view_versions == {"hourly": HOURLY.version, "daily_trend": DAILY_TREND.version}
    assert model.ttl == {"hourly": timedelta(hours=1), "daily_trend": timedelta(days=1)} and model.threshold == 2e-4
    X = np.array([[newest[view][feature][i] for view, feature in model.columns] for i in range(len(SYMBOLS))],
                 dtype=np.float64)
    out = lgb.Booster(model_file=str(model.path / "model.txt")).predict(X)
    # A classifier: P(up) - P(down), and 0 (FLAT) where the neutral class is the likeliest.
    expected = np.where(out[:, 1] >= out[:, [0, 2]].max(axis=1), 0.0, out[:, 2] - out[:, 0]) if name == "cls" else out
    assert np.abs(np.array([s.score for s in scores]) - expected).max() <= 1e-12
    assert [s.ts for s in scores] == newest["hourly"]["ts"].to_list()


def test_materialize_keeps_a_newer_online_row_and_names_absent_symbols(trained, tmp_path):
    with SqliteOnlineStore(trained.online_path, readonly=True) as online:
        stored = online.latest("hourly", "BTC/USDT")
    later = OnlineRow("hourly", "BTC/USDT", stored.ts + timedelta(hours=1), stored.view_version, stored.features, T0)
    with SqliteOnlineStore(Store(tmp_path).online_path) as online:
        online.put_many([later])
        assert materialize_latest(trained, HOURLY, ["BTC/USDT", "ETH/USDT"], online, now=T0) == 1
        assert online.latest("hourly", "BTC/USDT") == later
        assert online.latest("hourly", "ETH/USDT").ts == stored.ts
        with pytest.raises(FeatureStoreError, match=r"no offline rows of view 'hourly' .* for DOGE/USDT"):
            materialize_latest(trained, HOURLY, ["DOGE/USDT"], online, now=T0)
