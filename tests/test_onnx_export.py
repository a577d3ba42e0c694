"""ONNX export: parity on a >= 300-tree model, inputs placed on split thresholds, and every refusal path."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import onnx
import pytest

from featurestore.errors import ModelExportError
from training.onnx_export import check_exportable, export_onnx, run_onnx, to_onnx_float32, to_onnx_float64

BASE = {"verbosity": -1, "num_threads": 1, "seed": 7, "deterministic": True, "force_row_wise": True}


def market_like(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """14 features like the research view: returns, price levels (~40k), a rounded count, NaN warm-ups."""
    rng = np.random.default_rng(seed)
    X = rng.normal(scale=0.01, size=(n, 14))
    X[:, 4] = 40_000 + np.cumsum(rng.normal(size=n))  # an EMA-like price level
    X[:, 7] = np.round(rng.normal(size=n) * 3)  # discrete values
    X[:, 9] = np.log1p(rng.exponential(100, size=n))
    X[rng.random(X.shape) < 0.03] = np.nan
    y = 0.3 * np.nan_to_num(X[:, 0]) + 0.001 * np.nan_to_num(X[:, 7]) + rng.normal(scale=0.01, size=n)
    return X, y


@pytest.fixture(scope="module")
def regressor() -> tuple[lgb.Booster, np.ndarray]:
    X, y = market_like(20_000)
    booster = lgb.train({**BASE, "objective": "regression", "min_data_in_leaf": 20}, lgb.Dataset(X, y), 300)
    assert booster.num_trees() >= 300
    return booster, X


def on_thresholds(booster: lgb.Booster, X: np.ndarray, rows: int = 3000) -> np.ndarray:
    """Rows of X with one feature set exactly to a split threshold of the model (cycling over all splits)."""
    splits = []

    def walk(node: dict) -> None:
        if "split_index" in node:
            splits.append((node["split_feature"], node["threshold"]))
            walk(node["left_child"])
            walk(node["right_child"])

    for tree in booster.dump_model()["tree_info"]:
        walk(tree["tree_structure"])
    out = X[:rows].copy()
    for i in range(rows):
        feature, threshold = splits[i % len(splits)]
        out[i, feature] = threshold
    return out


def test_regressor_parity_float64_is_exact_and_float32_is_recorded(regressor):
    booster, X = regressor
    result = export_onnx(booster, X, kind="regressor")
    assert result.dtype == "float64" and result.parity.passed
    assert result.parity.rows == len(X) and result.parity.max_abs_diff <= 1e-12
    assert result.float32_parity.dtype == "float32" and result.float32_parity.max_abs_diff > 0
    model = onnx.load_from_string(result.model)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.DOUBLE
    assert np.allclose(run_onnx(result.model, X[:100], "float64"), booster.predict(X[:100]), rtol=0, atol=1e-12)


def test_inputs_on_thresholds_route_like_lightgbm_only_in_float64(regressor):
    booster, X = regressor
    placed = on_thresholds(booster, X)
    result = export_onnx(booster, placed, kind="regressor")
    assert result.parity.max_abs_diff <= 1e-12
    assert result.float32_parity.max_abs_diff > 1e-5  # float32 thresholds misroute such rows
    with pytest.raises(ModelExportError, match=r"refusing to publish the float32 ONNX model: max abs diff .* > 1e-05"):
        export_onnx(booster, placed, kind="regressor", dtype="float32")


def test_tiny_values_are_routed_as_zero_like_lightgbm(regressor):
    booster, X = regressor
    tiny = X[:500].copy()
    tiny[:, :4] = np.where(np.random.default_rng(1).random((500, 4)) < 0.5, 1e-36, -1e-36)
    got = run_onnx(to_onnx_float64(booster).SerializeToString(), tiny, "float64")
    assert np.abs(got - booster.predict(tiny)).max() <= 1e-12


def test_classifier_parity_and_class_gate():
    X, y = market_like(6000, seed=2)
    classes = np.digitize(y, [-0.005, 0.005])
    booster = lgb.train({**BASE, "objective": "multiclass", "num_class": 3}, lgb.Dataset(X, classes), 60)
    placed = on_thresholds(booster, X)
    result = export_onnx(booster, placed, kind="classifier")
    assert result.parity.class_mismatches == 0 and result.parity.max_abs_diff <= 1e-12
    assert result.float32_parity.class_mismatches is not None
    probabilities = run_onnx(result.model, X[:50], "float64")
    assert probabilities.shape == (50, 3) and np.allclose(probabilities.sum(axis=1), 1.0)


@pytest.mark.parametrize("objective", ["poisson", "huber", "quantile", "regression_l1"])
def test_other_supported_objectives_keep_parity(objective):
    X, y = market_like(3000, seed=3)
    target = np.exp(y * 10) if objective == "poisson" else y
    booster = lgb.train({**BASE, "objective": objective}, lgb.Dataset(X, target), 40)
    assert export_onnx(booster, X, kind="regressor").parity.max_abs_diff <= 1e-9


def test_nan_without_missing_values_in_training_is_compared_as_zero():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(3000, 3))
    booster = lgb.train({**BASE, "objective": "regression"}, lgb.Dataset(X, X[:, 0] + X[:, 1]), 30)
    test = X[:300].copy()
    test[::3, 0] = np.nan
    assert export_onnx(booster, test, kind="regressor").parity.max_abs_diff <= 1e-12


@pytest.mark.parametrize(("params", "message"), [
    ({"objective": "regression", "zero_as_missing": True}, "zero_as_missing=True"),
    ({"objective": "regression", "linear_tree": True}, "linear_tree=True"),
    ({"objective": "fair"}, "objective 'fair' is not supported by the ONNX converter"),
    ({"objective": "mape"}, "objective 'mape' is not supported by the ONNX converter"),
    ({"objective": "cross_entropy"}, "objective 'cross_entropy' is not supported by the ONNX converter"),
    ({"objective": "binary"}, "objective 'binary' is not exported by this project"),
])
def test_refusals(params, message):
    X, y = market_like(2000, seed=5)
    target = (y > 0).astype(float) if params["objective"] in ("cross_entropy", "binary") else np.abs(y) + 0.01
    booster = lgb.train({**BASE, **params}, lgb.Dataset(X, target), 5)
    for call in (check_exportable, to_onnx_float32, to_onnx_float64):
        with pytest.raises(ModelExportError, match=message):
            call(booster)
    with pytest.raises(ModelExportError, match=message):
        export_onnx(booster, X, kind="regressor")


def test_empty_test_set_and_bad_dtype_are_refused(regressor):
    booster, X = regressor
    with pytest.raises(ModelExportError, match="test set is empty"):
        export_onnx(booster, X[:0], kind="regressor")
    with pytest.raises(ModelExportError, match="'float64' or 'float32'"):
        export_onnx(booster, X, kind="regressor", dtype="float16")
