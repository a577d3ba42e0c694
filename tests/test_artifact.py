"""ModelMeta, the model directory's contract: round trip, the legacy layout, and errors that name file and field."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest
from fixtures.toy_model import write_toy_model

from featurestore.errors import ModelRegistryError
from featurestore.online import OnlineRow
from featurestore.online.sqlite import SqliteOnlineStore
from featurestore.store import Store
from serving.scorer import Scorer, load_model
from training.artifact import (
    BacktestSummary,
    FeatureColumn,
    LabelInfo,
    ModelMeta,
    OnnxInfo,
    ReferenceFile,
    TrainingInfo,
    Validation,
    ViewInfo,
)
from training.onnx_export import ParityReport, export_onnx
from training.reference import Distribution, ModelReference

T = datetime(2024, 5, 1, 12, tzinfo=UTC)
PARITY = ParityReport("float64", 1200, 0.0, 0.0, 0, 1e-5, True)
PARITY32 = ParityReport("float32", 1200, 0.02, 1e-4, 3, 1e-5, False)


def classifier_meta() -> ModelMeta:
    """Every field filled, as ``training.train`` fills them for a classifier over two views."""
    return ModelMeta(
        name="cls", version="3f2a9c0b1d4e", kind="classifier", trained_at=T,
        features=(FeatureColumn("hourly__ret_1", "hourly", "ret_1", "h1", "1h", 3600.0),
                  FeatureColumn("daily_trend__atr_14", "daily_trend", "atr_14", "d7", "1d", 86400.0),
                  FeatureColumn("hourly__rv_12", "hourly", "rv_12", "h1", "1h", 3600.0)),
        views=(ViewInfo("hourly", "h1", "1h"), ViewInfo("daily_trend", "d7", "1d")),
        label=LabelInfo("triple_barrier:h=6,pt=1.5,sl=1.5,atr=14", "triple_barrier", 6, "tb_h6", "1h", "tb_h6__end_ts"),
        classes=(-1, 0, 1),
        training=TrainingInfo(2160, ("BTC/USDT", "ETH/USDT"), datetime(2024, 1, 2, tzinfo=UTC), T, "ab" * 32,
                              "tb_h6__weight", 40),
        params={"kind": "classifier", "seed": 7, "extra": {}}, metrics={"accuracy": 0.41, "log_loss": 1.07},
        backtest=BacktestSummary({"sharpe": 0.8, "trades": 120}, {"sharpe": 0.2, "trades": 1}),
        validation=Validation("purged-kfold", 5, 10800.0, 3.0),
        onnx=OnnxInfo({"": 21, "ai.onnx.ml": 5}, "input", "float64", ("label", "probabilities"), PARITY, PARITY32),
        threshold=2e-4, libraries={"lightgbm": "4.7.0", "onnxruntime": "1.31.1"})


def test_round_trip_through_json_and_a_directory(tmp_path):
    meta = classifier_meta()
    assert ModelMeta.from_json(meta.to_json()) == meta
    meta.write(tmp_path)
    assert ModelMeta.read(tmp_path) == meta
    written = json.loads((tmp_path / "meta.json").read_text())
    assert next(iter(written)) == "format" and written["format"] == 4
    assert written["trained_at"] == "2024-05-01T12:00:00+00:00" and written["onnx"]["input_dtype"] == "float64"
    assert json.loads((tmp_path / "features.json").read_text()) == {
        "features": [{"name": "hourly__ret_1", "view": "hourly", "feature": "ret_1", "view_version": "h1",
                      "timeframe": "1h", "ttl_seconds": 3600.0},
                     {"name": "daily_trend__atr_14", "view": "daily_trend", "feature": "atr_14", "view_version": "d7",
                      "timeframe": "1d", "ttl_seconds": 86400.0},
                     {"name": "hourly__rv_12", "view": "hourly", "feature": "rv_12", "view_version": "h1",
                      "timeframe": "1h", "ttl_seconds": 3600.0}],
        "order": ["hourly__ret_1", "daily_trend__atr_14", "hourly__rv_12"]}
    assert meta.columns == (("hourly", "ret_1"), ("daily_trend", "atr_14"), ("hourly", "rv_12"))
    assert meta.view_versions == {"hourly": "h1", "daily_trend": "d7"}
    assert {view: ttl.total_seconds() for view, ttl in meta.ttl.items()} == {"hourly": 3600.0, "daily_trend": 86400.0}


def test_a_meta_is_checked_when_built_not_only_when_read():
    with pytest.raises(ModelRegistryError, match="field 'trained_at' is 2024-05-01T12:00:00, a time without a UTC offset"):
        replace(classifier_meta(), trained_at=datetime(2024, 5, 1, 12))
    with pytest.raises(ModelRegistryError, match=r"field 'views' lists \['spare'\], which no feature uses"):
        replace(classifier_meta(), views=(*classifier_meta().views, ViewInfo("spare", "s1", "1h")))
    with pytest.raises(ModelRegistryError, match=r"field 'classes' is \[-1, 0, 1\] for a regressor: write null"):
        replace(classifier_meta(), kind="regressor")


def test_non_finite_metrics_are_written_as_null():
    meta = replace(classifier_meta(), metrics={"ic_spearman": float("nan"), "rmse": np.float64(0.5)})
    assert ModelMeta.from_json(meta.to_json()).metrics == {"ic_spearman": None, "rmse": 0.5}


def test_the_export_records_the_opsets_of_the_graph_it_built():
    X = np.random.default_rng(0).normal(size=(300, 3))
    booster = lgb.train({"objective": "regression", "verbosity": -1, "num_threads": 1}, lgb.Dataset(X, X[:, 0]), 5)
    for dtype in ("float64", "float32"):
        exported = export_onnx(booster, X, kind="regressor", dtype=dtype, tolerance=1.0)
        info = OnnxInfo.from_export(exported)
        assert (info.input_name, info.input_dtype, info.outputs) == ("input", dtype, ("variable",))
        # float32: onnxmltools picks the lowest ai.onnx opset the graph needs (train.py used to claim 15)
        assert info.opsets == ({"": 21, "ai.onnx.ml": 5} if dtype == "float64" else {"": 8, "ai.onnx.ml": 1})


# --- the layout before ModelMeta ------------------------------------------------------------------

def legacy_meta(kind: str = "regressor") -> dict:
    """meta.json as ``training.train`` wrote it before ModelMeta (every key, in its order)."""
    features = ["hourly__ret_1", "hourly__rv_12"]
    return {
        "name": "reg", "version": "0123456789ab", "kind": kind, "trained_at": "2024-05-01T12:00:00+00:00",
        "feature_names": features,
        "features": [{"name": name, "view": "hourly", "feature": name.split("__")[1], "view_version": "h1",
                      "timeframe": "1h", "ttl_seconds": 3600.0} for name in features],
        "views": [{"name": "hourly", "version": "h1", "timeframe": "1h"}],
        "label": {"spec": "future_ret:h=1", "kind": "future_ret", "h": 1, "target": "future_ret_h1",
                  "bars_timeframe": "1h", "end_column": "future_ret_h1__end_ts"},
        "classes": [-1, 0, 1] if kind == "classifier" else None,
        "training": {"rows": 2160, "symbols": ["BTC/USDT"], "first_event_ts": "2024-01-02 00:00:00+00:00",
                     "last_event_ts": "2024-05-01 12:00:00+00:00", "data_fingerprint": "cd" * 32,
                     "weights": "future_ret_h1__weight", "trees": 40},
        "params": {"kind": kind, "seed": 7}, "seed": 7, "metrics": {"ic_spearman": 0.03, "r2": None},
        "backtest": {"model": {"sharpe": 0.8}, "buy_and_hold": {"sharpe": 0.2}},
        "onnx": {"input_dtype": "float64", "parity": {"dtype": "float64", "rows": 10, "max_abs_diff": 0.0,
                                                      "mean_abs_diff": 0.0, "class_mismatches": None,
                                                      "tolerance": 1e-5, "passed": True},
                 "float32_parity": {"dtype": "float32", "rows": 10, "max_abs_diff": 1e-3, "mean_abs_diff": 1e-6,
                                    "class_mismatches": None, "tolerance": 1e-5, "passed": False},
                 "input_name": "input", "outputs": ["label", "probabilities"] if kind == "classifier" else ["variable"],
                 "opset": {"": 21, "ai.onnx.ml": 5}},
        "onnx_input_dtype": "float64",
        "libraries": {"lightgbm": "4.7.0"},
        "versioning": "version = sha256(data fingerprint + settings)[:12]",
    }


def legacy_toy_meta(threshold: float | None = 0.1) -> dict:
    """meta.json as ``serving.toy_model`` wrote it before ModelMeta: what the old scorer needed, no more."""
    features = ["toy__a", "toy__b"]
    return {"name": "toy", "version": "t0", "kind": "regressor", "feature_names": features, "classes": None,
            "features": [{"name": name, "view": "toy", "feature": name[5:], "view_version": "v1", "timeframe": "1h",
                          "ttl_seconds": 3600.0} for name in features],
            "views": [{"name": "toy", "version": "v1", "timeframe": "1h"}],
            "onnx_input_dtype": "float64", "onnx": {"input_name": "input", "outputs": ["variable"]},
            "threshold": threshold}


def write_json(path: Path, data: dict) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "meta.json").write_text(json.dumps(data, indent=1))
    return path


@pytest.mark.parametrize("kind", ["regressor", "classifier"])
def test_a_legacy_trained_meta_loads_and_takes_its_threshold_from_the_report(tmp_path, kind):
    write_json(tmp_path, legacy_meta(kind))
    (tmp_path / "report.json").write_text(json.dumps({"backtest": {"threshold": 3e-4, "cost_bps_per_side": 5.0}}))
    meta = ModelMeta.read(tmp_path)
    assert (meta.name, meta.version, meta.kind, meta.trained_at) == ("reg", "0123456789ab", kind, T)
    assert meta.feature_names == ("hourly__ret_1", "hourly__rv_12") and meta.view_versions == {"hourly": "h1"}
    assert meta.onnx.input_dtype == "float64" and meta.onnx.opsets == {"": 21, "ai.onnx.ml": 5}
    assert meta.onnx.parity.passed and not meta.onnx.float32_parity.passed
    assert meta.training.weights_column == "future_ret_h1__weight"
    assert meta.training.first_event_ts == datetime(2024, 1, 2, tzinfo=UTC) and meta.training.symbols == ("BTC/USDT",)
    assert meta.label.target == "future_ret_h1" and meta.params["seed"] == 7 and meta.metrics["r2"] is None
    assert meta.classes == ((-1, 0, 1) if kind == "classifier" else None)
    assert meta.threshold == 3e-4  # training.train wrote it in report.json only
    (tmp_path / "report.json").unlink()
    assert ModelMeta.read(tmp_path).threshold is None
    # read once, written in the current format: the same object
    meta.write(tmp_path / "upgraded")
    assert ModelMeta.read(tmp_path / "upgraded") == meta


def test_a_legacy_toy_meta_keeps_the_old_readers_defaults(tmp_path):
    meta = ModelMeta.read(write_json(tmp_path / "a", legacy_toy_meta()))
    assert (meta.trained_at, meta.label, meta.training, meta.backtest, meta.onnx.parity) == (None,) * 5
    assert meta.onnx.input_dtype == "float64" and meta.threshold == 0.1 and meta.onnx.opsets == {}
    old = legacy_toy_meta()
    del old["onnx_input_dtype"], old["onnx"]
    meta = ModelMeta.read(write_json(tmp_path / "b", old))
    assert (meta.onnx.input_dtype, meta.onnx.input_name, meta.onnx.outputs) == ("float32", "input", ("variable",))


def test_a_model_directory_published_before_modelmeta_still_scores(tmp_path):
    booster = write_toy_model(tmp_path / "model", threshold=0.1)
    write_json(tmp_path / "model", legacy_toy_meta(threshold=None))
    (tmp_path / "model" / "features.json").unlink()  # the old toy model wrote none
    online_path = Store(tmp_path).online_path
    with SqliteOnlineStore(online_path) as online:
        online.put_many([OnlineRow("toy", "BTC/USDT", T, "v1", {"a": 0.5, "b": None}, T)])
    model = load_model(tmp_path / "model")
    assert model.threshold is None and model.dtype == "float64" and model.no_missing == {"toy__a"}
    with Scorer(model, SqliteOnlineStore(online_path, readonly=True)) as scorer:
        (score,) = scorer.score(["BTC/USDT"], now=T)
    assert score.score == booster.predict(np.array([[0.5, np.nan]]))[0] and score.missing == ("toy__b",)
    old = legacy_toy_meta()
    del old["onnx_input_dtype"]  # the old reader's default, float32, does not fit this float64 graph
    write_json(tmp_path / "model", old)
    with pytest.raises(ModelRegistryError, match=r"takes 'input' tensor\(double\), but meta.json says 'input' float32"):
        Scorer(load_model(tmp_path / "model"), SqliteOnlineStore(online_path, readonly=True))


# --- errors ---------------------------------------------------------------------------------------

def current(**changes) -> dict:
    data = json.loads(classifier_meta().to_json())
    for dotted, value in changes.items():
        *parents, key = dotted.split("__")
        target = data
        for parent in parents:
            target = target[parent] if not parent.isdigit() else target[int(parent)]
        if value is ...:
            del target[key]
        else:
            target[key] = value
    return data


@pytest.mark.parametrize(("changes", "message"), [
    ({"onnx__input_name": ...}, "field 'onnx.input_name' is missing"),
    ({"threshold": ..., "libraries": ...}, "field 'threshold' is missing (and libraries)"),
    ({"onnx__input_dtype": "float16"}, "field 'onnx.input_dtype' must be one of 'float64', 'float32', got 'float16'"),
    ({"kind": "ranker"}, "field 'kind' must be one of 'regressor', 'classifier', got 'ranker'"),
    ({"onnx__input_dtpye": "float64"}, "field 'onnx.input_dtpye' is not part of format 4; did you mean 'onnx.input_dtype'?"),
    ({"training__rows": "2160"}, "field 'training.rows' must be an integer, got '2160'"),
    ({"training__trees": True}, "field 'training.trees' must be an integer, got True"),
    ({"features__1__ttl_seconds": None}, "field 'features[1].ttl_seconds' is null, expected a number"),
    ({"trained_at": "2024-05-01T12:00:00"}, "field 'trained_at' must be an ISO-8601 time with a UTC offset"),
    ({"onnx__opsets__": "21"}, "field 'onnx.opsets.' must be an integer, got '21'"),
    ({"views": {"hourly": "h1"}}, "field 'views' must be a list"),
    ({"features__2__view_version": "h2"}, "field 'features[2]': view 'hourly' version h2 1h, but 'views' says version h1"),
    ({"features__2__name": "hourly__rv"}, "field 'features[2].name' is 'hourly__rv', expected 'hourly__rv_12'"),
    ({"features__1__view": "daily", "features__1__name": "daily__atr_14"},
     "field 'features[1].view' is 'daily', not one of 'views' (hourly, daily_trend)"),
    ({"features__2__ttl_seconds": 60}, "field 'features[2].ttl_seconds' is 60, another feature of view 'hourly' says 3600"),
    ({"classes": None}, "field 'classes' is None: a classifier needs its classes"),
    ({"onnx__outputs": ["variable"]}, "field 'onnx.outputs' is ['variable'], a classifier graph outputs ['label', "
                                      "'probabilities']"),
    ({"format": 5}, "field 'format' is 5: this version of featurestore reads formats 2 to 4 and the legacy layout"),
    ({"validation__scheme": "kfold"}, "field 'validation.scheme' must be one of 'walk-forward', 'purged-kfold', got"),
])
def test_a_malformed_meta_names_the_file_and_the_field(tmp_path, changes, message):
    write_json(tmp_path, current(**changes))
    with pytest.raises(ModelRegistryError) as caught:
        ModelMeta.read(tmp_path)
    assert str(caught.value).startswith(f"{tmp_path / 'meta.json'}: ")
    assert message in str(caught.value)


@pytest.mark.parametrize(("change", "message"), [
    (lambda old: old.pop("feature_names"), "field 'feature_names' is missing (a meta.json without 'format', the legacy"),
    (lambda old: old.update(onnx_input_dtype="float16"), "field 'onnx_input_dtype' must be one of 'float64', 'float32', "
                                                         "got 'float16'"),
    (lambda old: old["feature_names"].append("toy__c"), "field 'feature_names' lists ['toy__c'], which 'features' does"),
])
def test_a_malformed_legacy_meta_names_the_field(tmp_path, change, message):
    old = legacy_toy_meta()
    change(old)
    with pytest.raises(ModelRegistryError) as caught:
        ModelMeta.read(write_json(tmp_path, old))
    assert str(caught.value).startswith(f"{tmp_path / 'meta.json'}: ") and message in str(caught.value)


def test_unreadable_files_and_directories(tmp_path):
    (tmp_path / "meta.json").write_text("{oops")
    with pytest.raises(ModelRegistryError, match=r"meta\.json: not JSON \(Expecting property name"):
        ModelMeta.read(tmp_path)
    (tmp_path / "meta.json").write_text("[1, 2]")
    with pytest.raises(ModelRegistryError, match=r"meta\.json: must hold a JSON object, got list"):
        ModelMeta.read(tmp_path)
    with pytest.raises(ModelRegistryError, match="is not a model directory"):
        ModelMeta.read(tmp_path / "absent")
    (tmp_path / "model.onnx").write_bytes(b"")
    (tmp_path / "model.txt").write_text("")
    write_json(tmp_path, current(onnx__input_dtype="float16"))
    with pytest.raises(ModelRegistryError, match=r"meta\.json: field 'onnx\.input_dtype' must be one of"):
        load_model(tmp_path)


# --- reference distributions ----------------------------------------------------------------------

def test_a_format_2_meta_published_before_reference_distributions_loads_without_one(tmp_path):
    old = json.loads(classifier_meta().to_json())
    del old["reference"], old["validation"]
    old["format"] = 2
    meta = ModelMeta.read(write_json(tmp_path, old))
    assert meta == replace(classifier_meta(), validation=None)
    assert meta.reference is None and meta.read_reference(tmp_path) is None


def test_a_format_3_meta_published_before_the_cross_validation_was_recorded_loads_without_it(tmp_path):
    old = json.loads(replace(classifier_meta(), reference=ReferenceFile("reference.json", "ab" * 32)).to_json())
    del old["validation"]
    old["format"] = 3
    meta = ModelMeta.read(write_json(tmp_path, old))
    assert meta.validation is None and meta.reference == ReferenceFile("reference.json", "ab" * 32)


def test_the_reference_file_is_read_through_meta_and_refused_when_changed(tmp_path):
    rng = np.random.default_rng(1)
    reference = ModelReference(500, {"hourly__ret_1": Distribution.of(rng.normal(size=500))},
                               Distribution.of(rng.normal(size=500)), None)
    meta = replace(classifier_meta(), reference=ReferenceFile("reference.json", reference.write(tmp_path)))
    meta.write(tmp_path)
    assert ModelMeta.read(tmp_path).read_reference(tmp_path) == reference
    (tmp_path / "reference.json").write_text((tmp_path / "reference.json").read_text().replace('"rows":500', '"rows":5'))
    with pytest.raises(ModelRegistryError, match=r"is not the reference meta\.json recorded"):
        meta.read_reference(tmp_path)
