"""Models, evaluation and the end-to-end pipeline: determinism, early stopping, metrics, backtest, registry."""

from __future__ import annotations

import functools
import hashlib
import json
import math
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from featurestore.backfill import backfill
from featurestore.definitions import FeatureView
from featurestore.errors import ModelRegistryError, TrainingDataError
from featurestore.ingest import ingest_synthetic
from featurestore.store import Store
from training.artifact import ModelMeta
from training.evaluation import (
    backtest,
    classification_metrics,
    performance,
    regression_metrics,
    write_report,
)
from training.labels import parse_label
from training.model import ModelParams, fit_model, predict
from training.onnx_export import run_onnx
from training.registry import list_models, load_meta, production_version, promote
from training.train import frame_fingerprint, train_model

T0 = datetime(2024, 1, 1, tzinfo=UTC)
NOW = datetime(2030, 1, 1, tzinfo=UTC)
close = pl.col("close")
HOURLY = FeatureView("hourly", "1h", {"ret_1": (close / close.shift(1)).log(), "ret_6": (close / close.shift(6)).log(),
                                      "rv_12": (close / close.shift(1)).log().rolling_std(12),
                                      "log_volume": pl.col("volume").log1p()})
FAST = {"num_threads": 1, "num_boost_round": 60, "min_data_in_leaf": 40}


def noisy(n: int = 3000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 5))
    return X, 0.3 * X[:, 0] + rng.normal(size=n)


# --- model -------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["regressor", "classifier"])
def test_two_fits_give_byte_identical_models(kind):
    X, y = noisy()
    target = np.sign(np.round(y)) if kind == "classifier" else y
    params = ModelParams(kind=kind, num_threads=2, num_boost_round=80)
    first, second = (fit_model(X, target, feature_names=list("abcde"), params=params,
                               event_ts=np.arange(len(X))).model_to_string() for _ in range(2))
    assert first == second


def test_early_stopping_on_the_latest_slice_truncates_the_model():
    X, y = noisy(seed=1)
    stopped = fit_model(X, y, feature_names=list("abcde"), params=ModelParams(num_boost_round=400, num_threads=1))
    full = fit_model(X, y, feature_names=list("abcde"), params=ModelParams(num_boost_round=400, num_threads=1,
                                                                            valid_fraction=0))
    assert stopped.num_trees() < 400 == full.num_trees()


def test_classifier_predicts_three_probabilities_and_refuses_other_labels():
    X, y = noisy(seed=2)
    labels = np.sign(np.round(y))
    booster = fit_model(X, labels, feature_names=list("abcde"), params=ModelParams(kind="classifier", **FAST))
    assert predict(booster, X[:7], "classifier").shape == (7, 3)
    with pytest.raises(TrainingDataError, match=r"class labels must be in \(-1, 0, 1\), got \[2\]"):
        fit_model(X, labels + 1, feature_names=list("abcde"), params=ModelParams(kind="classifier", **FAST))
    with pytest.raises(TrainingDataError, match="target value"):
        fit_model(X, np.where(y > 2, np.nan, y), feature_names=list("abcde"), params=ModelParams(**FAST))


# --- metrics and backtest -----------------------------------------------------------------------

def test_regression_metrics_against_definitions():
    from scipy.stats import spearmanr
    from sklearn.metrics import mean_absolute_error, r2_score

    rng = np.random.default_rng(3)
    y, p = rng.normal(size=200), rng.normal(size=200)
    y[:5] = 0.0
    m = regression_metrics(y, p)
    assert m["rmse"] == pytest.approx(math.sqrt(np.mean((y - p) ** 2)))
    assert m["mae"] == pytest.approx(mean_absolute_error(y, p))
    assert m["r2"] == pytest.approx(r2_score(y, p))
    assert m["ic_spearman"] == pytest.approx(spearmanr(p, y).statistic)
    assert m["directional_accuracy"] == pytest.approx(np.mean(np.sign(p[5:]) == np.sign(y[5:])))


def test_classification_metrics():
    proba = np.array([[0.7, 0.2, 0.1], [0.1, 0.2, 0.7], [0.2, 0.5, 0.3], [0.6, 0.3, 0.1]])
    m = classification_metrics(np.array([-1, 1, 1, 0]), proba)
    assert m["accuracy"] == 0.5 and m["balanced_accuracy"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert m["log_loss"] == pytest.approx(-np.mean(np.log([0.7, 0.7, 0.3, 0.3])))


def test_backtest_by_hand_t_plus_1_and_costs():
    ts = [T0 + timedelta(minutes=i) for i in range(5)]
    r = [0.01, -0.02, 0.03, 0.01, None]  # the last bar has not closed: dropped
    frame = pl.DataFrame({"symbol": ["A"] * 5, "event_ts": ts, "signal": [0.5, 0.2, -0.1, 0.0, 1.0], "bar_ret": r})
    result = backtest(frame, periods_per_year=525_600, cost_bps=5)
    simple = np.expm1(np.array(r[:4]))
    position, trades = np.array([1, 1, -1, 0]), np.array([1, 0, 2, 1])
    expected = position * simple - 0.0005 * trades
    assert result.curve["strategy"].to_list() == pytest.approx(expected.tolist())
    assert result.strategy["total_return"] == pytest.approx(np.prod(1 + expected) - 1)
    hold = simple - 0.0005 * np.array([1, 0, 0, 0])
    assert result.buy_and_hold["total_return"] == pytest.approx(np.prod(1 + hold) - 1)
    assert result.strategy["turnover_per_period"] == pytest.approx(trades.mean())
    assert result.strategy["win_rate"] == pytest.approx(1 / 3)  # in market 3 bars (+, -, short into a rise)
    thresholded = backtest(frame, periods_per_year=525_600, threshold=0.3)
    assert thresholded.strategy["trades"] == 2  # in at bar 0, out at bar 1


def test_backtest_portfolio_is_the_equal_weight_mean():
    frame = pl.DataFrame({"symbol": ["A", "B", "A", "B"], "event_ts": [T0, T0, T0 + timedelta(hours=1)] * 1
                          + [T0 + timedelta(hours=1)], "signal": [1.0, -1.0, 1.0, -1.0],
                          "bar_ret": [0.02, 0.02, -0.01, 0.03]})
    result = backtest(frame, periods_per_year=8760, cost_bps=0)
    assert result.curve["strategy"].to_list() == pytest.approx([0.0, (math.expm1(-0.01) - math.expm1(0.03)) / 2])


def test_performance_definitions():
    r = np.array([0.01, -0.02, 0.015, -0.005, 0.02])
    m = performance(r, periods_per_year=252)
    assert m["sharpe"] == pytest.approx(r.mean() / r.std(ddof=1) * math.sqrt(252))
    assert m["sortino"] == pytest.approx(r.mean() / math.sqrt(np.mean(np.minimum(r, 0) ** 2)) * math.sqrt(252))
    equity = np.cumprod(1 + r)
    assert m["max_drawdown"] == pytest.approx(np.max(1 - equity / np.maximum.accumulate(equity)))
    assert m["calmar"] == pytest.approx(m["cagr"] / m["max_drawdown"])


def test_write_report_json_and_pngs(tmp_path):
    curve = backtest(pl.DataFrame({"symbol": ["A"] * 3, "event_ts": [T0 + timedelta(hours=i) for i in range(3)],
                                   "signal": [1.0, -1.0, 1.0], "bar_ret": [0.01, 0.02, -0.01]}),
                     periods_per_year=8760).curve
    files = write_report(tmp_path, {"x": float("nan"), "y": np.float64(1.5)}, curve=curve, importance={"a": 2.0, "b": 1.0})
    assert json.loads((tmp_path / "report.json").read_text()) == {"x": None, "y": 1.5}
    assert [f.name for f in files] == ["report.json", "equity.png", "importance.png"]
    assert all(f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for f in files[1:])


# --- end to end through the API ---------------------------------------------------------------

@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    store = Store(tmp_path_factory.mktemp("model") / "store")
    ingest_synthetic(store, ["BTC/USDT", "ETH/USDT"], "1h", since=T0, until=T0 + timedelta(days=45), now=NOW, seed=5)
    backfill(store, HOURLY, now=NOW, progress=False)
    return store


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(("kind", "label"), [("regressor", "future_ret:h=1"),
                                             ("classifier", "triple_barrier:h=6,pt=1.5,sl=1.5,atr=14")])
def test_training_twice_gives_identical_model_bytes_and_onnx_outputs(store, tmp_path, kind, label):
    runs = [train_model(store, views=[HOURLY], label=parse_label(label), name="m", models_root=tmp_path / f"run{i}",
                        now=NOW + timedelta(days=i), kind=kind, params=ModelParams(kind=kind, **FAST), folds=2)
            for i in range(2)]
    first, second = (r.path for r in runs)
    assert runs[0].version == runs[1].version
    for name in ("model.onnx", "model.txt", "features.json", "reference.json"):
        assert sha(first / name) == sha(second / name), name
    X = np.random.default_rng(0).normal(scale=0.01, size=(200, 4))
    outputs = [run_onnx((p / "model.onnx").read_bytes(), X, "float64") for p in (first, second)]
    assert np.array_equal(outputs[0], outputs[1])
    meta = ModelMeta.read(first)
    assert meta.feature_names == ("hourly__ret_1", "hourly__ret_6", "hourly__rv_12", "hourly__log_volume")
    assert {f.view_version for f in meta.features} == {HOURLY.version}
    assert meta.onnx.input_dtype == "float64" and meta.params["seed"] == 7 and meta.label.spec == label
    assert meta.onnx.parity.passed and meta.onnx.parity.rows > 0
    assert meta.onnx.opsets == {"": 21, "ai.onnx.ml": 5}
    assert meta.threshold >= (2 * 5e-4 if kind == "regressor" else 0.0)  # chosen: never below a round trip's cost
    assert len(meta.training.data_fingerprint) == 64
    assert {"lightgbm", "onnxruntime", "onnxmltools", "polars"} <= set(meta.libraries)
    assert sorted(p.name for p in first.iterdir()) == ["equity.png", "features.json", "importance.png", "meta.json",
                                                       "model.onnx", "model.txt", "reference.json", "report.json"]
    reference = meta.read_reference(first)  # the training set's distributions, and the out-of-sample figures
    assert reference.rows == meta.training.rows and list(reference.features) == list(meta.feature_names)
    assert all(d.rows == reference.rows and len(d.shares) == len(d.edges) + 1 for d in reference.features.values())
    assert reference.prediction.rows == reference.rows and reference.backtest.rows == runs[0].report["out_of_sample_rows"]
    if kind == "regressor":  # the same Spearman IC the walk-forward metrics report
        assert reference.backtest.ic == pytest.approx(meta.metrics["ic_spearman"], abs=1e-12)


def test_the_default_threshold_does_not_trade_on_noise_and_costs_that_dominate_are_named(store, tmp_path):
    train = functools.partial(train_model, store, views=[HOURLY], label=parse_label("future_ret:h=1"), name="m",
                              models_root=tmp_path, now=NOW, params=ModelParams(**FAST), folds=2)
    chosen = train()
    selection = chosen.report["backtest"]["threshold_selection"]
    candidates = {c["threshold"]: c["total_return"] for c in selection["candidates"]}
    assert chosen.meta.threshold == max(candidates, key=lambda c: (candidates[c], c)) >= 1e-3  # 2 x 5 bps
    assert chosen.report["backtest"]["model"]["total_return"] == candidates[chosen.meta.threshold] >= 0
    assert chosen.warnings == () and chosen.report["warnings"] == []

    every_bar = train(threshold=0.0, cost_bps=50.0)  # the sign of a predicted hourly return, at 50 bps a side
    model = every_bar.report["backtest"]["model"]
    assert model["costs_dominate"] and model["costs"] > abs(model["gross_return"])
    assert every_bar.report["backtest"]["threshold_selection"] == "given"
    (warning,) = every_bar.warnings
    assert warning.startswith(f"costs dominate the backtest: {model['turnover_per_period']:.2f} position changes per "
                              f"bar at 50 bps per side cost {model['costs']:.1%} over the out-of-sample bars, more than "
                              f"the gross return ({model['gross_return']:+.1%})")


def test_version_follows_the_data_and_the_registry_pointer(store, tmp_path):
    root = tmp_path / "models"
    params = ModelParams(**FAST)
    a = train_model(store, views=[HOURLY], label=parse_label("future_ret:h=1"), name="m", models_root=root, now=NOW,
                    params=params, folds=2)
    b = train_model(store, views=[HOURLY], label=parse_label("future_ret:h=1"), name="m", models_root=root, now=NOW,
                    params=params, folds=2, end=T0 + timedelta(days=40))
    assert a.version != b.version and a.created and b.created
    assert [m.version for m in list_models(root, "m")] and production_version(root, "m") is None
    promote(root, "m", b.version)
    assert production_version(root, "m") == b.version
    assert [m.production for m in list_models(root) if m.version == b.version] == [True]
    with pytest.raises(ModelRegistryError, match=f"stored versions of 'm': .*{a.version}"):
        promote(root, "m", "0000")
    assert load_meta(root, "m", a.version).version == a.version


def test_fingerprint_sees_any_change():
    frame = pl.DataFrame({"a": [1.0, None, 3.0], "s": ["x", "y", None]})
    assert frame_fingerprint(frame) == frame_fingerprint(frame.clone())
    assert frame_fingerprint(frame) != frame_fingerprint(frame.with_columns(a=pl.Series([1.0, 0.0, 3.0])))
    assert frame_fingerprint(frame) != frame_fingerprint(frame.with_columns(s=pl.Series(["x", "y", ""])))


def test_pipeline_refusals(store, tmp_path):
    with pytest.raises(TrainingDataError, match="a classifier needs a class label"):
        train_model(store, views=[HOURLY], label=parse_label("future_ret:h=1"), name="m", models_root=tmp_path,
                    now=NOW, kind="classifier")
    with pytest.raises(TrainingDataError, match="distinct times; need at least"):
        train_model(store, views=[HOURLY], label=parse_label("future_ret:h=1"), name="m", models_root=tmp_path,
                    now=NOW, start=T0 + timedelta(days=44))
    assert not list(tmp_path.iterdir())
