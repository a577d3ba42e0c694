"""LightGBM -> ONNX with a parity gate (``docs/onnx.md``).

Two conversions of the same booster:

- ``float32``: onnxmltools' ``convert_lightgbm`` (``TreeEnsembleRegressor``/``Classifier``, float32
  thresholds and input). An input equal to a float32-rounded threshold can take the other branch.
- ``float64`` (published by default): the trees rebuilt from ``Booster.dump_model()`` as one
  ``TreeEnsemble`` node (``ai.onnx.ml`` opset 5) with float64 thresholds, leaf values, input and output,
  and LightGBM's own input rules (``|x| <= 1e-35`` is routed as 0; ``NaN`` takes the default branch, or
  is compared as 0 where the split's ``missing_type`` is None). This reproduces LightGBM's routing exactly.

Graph interface (both): input ``input`` ``[N, n_features]``; a regressor outputs ``variable`` ``[N, 1]``;
a classifier outputs ``label`` (int64 class index) and ``probabilities`` ``[N, n_classes]``.

The gate runs onnxruntime on the whole test set and compares with ``Booster.predict``: a regressor is
refused when the max abs difference exceeds ``tolerance`` (1e-5), a classifier when any predicted class
differs. The float32 casting difference is measured and recorded either way. The gate and
``serving.scorer`` open their sessions with ``onnx_session`` (one thread, tuned for single rows). The
result carries the graph's interface as built: its opsets, input name and output names. Refused before
conversion: ``zero_as_missing``, ``linear_tree``, categorical splits, ``rf`` boosting and objectives
other than ``SUPPORTED_OBJECTIVES`` (``fair``, ``mape``, ``cross_entropy`` have no converter).

>>> import numpy as np, lightgbm as lgb
>>> X = np.random.default_rng(0).normal(size=(300, 4)); y = X[:, 0] + X[:, 1] ** 2
>>> booster = lgb.train({"objective": "regression", "verbosity": -1, "num_threads": 1}, lgb.Dataset(X, y), 20)
>>> result = export_onnx(booster, X, kind="regressor")
>>> result.dtype, result.parity.max_abs_diff < 1e-12, result.parity.passed
('float64', True, True)
>>> result.opsets, result.input_name, result.outputs
({'': 21, 'ai.onnx.ml': 5}, 'input', ('variable',))
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from featurestore.errors import ModelExportError

if TYPE_CHECKING:
    import lightgbm as lgb
    import onnx
    import onnxruntime as ort

__all__ = [
    "SUPPORTED_OBJECTIVES",
    "OnnxExport",
    "ParityReport",
    "check_exportable",
    "export_onnx",
    "onnx_session",
    "run_onnx",
    "to_onnx_float32",
    "to_onnx_float64",
]

OnnxDtype = Literal["float64", "float32"]
SUPPORTED_OBJECTIVES = ("regression", "regression_l1", "huber", "quantile", "poisson", "gamma", "tweedie", "multiclass")
_EXP_OBJECTIVES = ("poisson", "gamma", "tweedie")
_ZERO_THRESHOLD = float(np.float32(1e-35))  # LightGBM's kZeroThreshold, as the double it compares with
_NO_CONVERTER = ("fair", "mape", "cross_entropy", "cross_entropy_lambda")


def _model_info(booster: lgb.Booster) -> dict[str, Any]:
    dump = booster.dump_model()
    text = booster.model_to_string()
    return {"dump": dump, "objective": dump["objective"].split()[0], "num_class": dump["num_class"],
            "per_iteration": dump["num_tree_per_iteration"], "n_features": dump["max_feature_idx"] + 1, "text": text}


def check_exportable(booster: lgb.Booster) -> dict[str, Any]:
    """Refuse what onnx.md found to convert wrongly or not at all; return the parsed model dump."""
    info = _model_info(booster)
    text, objective = info["text"], info["objective"]
    if "[zero_as_missing: 1]" in text or '"missing_type": "Zero"' in str(info["dump"]).replace("'", '"'):
        raise ModelExportError("refusing to export: the model was trained with zero_as_missing=True, which converts "
                               "to ONNX without error but predicts wrongly (max diff 2.1 measured); retrain without it")
    if "[linear_tree: 1]" in text or "\nis_linear=1" in text:
        raise ModelExportError("refusing to export: linear_tree=True models convert to ONNX without error but predict "
                               "wrongly (max diff 3.9 measured); retrain with linear_tree=False")
    if objective in _NO_CONVERTER:
        raise ModelExportError(f"refusing to export: objective {objective!r} is not supported by the ONNX converter "
                               f"(onnxmltools raises NotImplementedError); use one of {', '.join(SUPPORTED_OBJECTIVES)}")
    if objective not in SUPPORTED_OBJECTIVES:
        raise ModelExportError(f"refusing to export: objective {objective!r} is not exported by this project; "
                               f"supported: {', '.join(SUPPORTED_OBJECTIVES)}")
    if info["dump"].get("average_output"):
        raise ModelExportError("refusing to export: boosting='rf' (averaged trees) is not exported; use gbdt")
    if "[boosting: rf]" in text:
        raise ModelExportError("refusing to export: boosting='rf' is not exported; use gbdt")
    if any(tree.get("num_cat", 0) for tree in info["dump"]["tree_info"]):
        raise ModelExportError("refusing to export: the model has categorical splits; the project's features are "
                               "numeric, retrain without categorical_feature")
    return info


def to_onnx_float32(booster: lgb.Booster) -> onnx.ModelProto:
    """onnxmltools' conversion: float32 input, thresholds and output."""
    import onnxmltools
    from onnxmltools.convert.common.data_types import FloatTensorType

    info = check_exportable(booster)
    try:
        return onnxmltools.convert_lightgbm(booster, initial_types=[("input", FloatTensorType([None, info["n_features"]]))],
                                            target_opset=15, zipmap=False)
    except NotImplementedError as exc:
        raise ModelExportError(f"refusing to export: onnxmltools cannot convert this model: {exc}") from None


def _flatten(dump: dict, per_iteration: int) -> dict[str, list]:
    """Every tree's nodes and leaves in the layout of the ``TreeEnsemble`` operator."""
    arrays: dict[str, list] = {k: [] for k in ("roots", "feature", "split", "true", "true_leaf", "false", "false_leaf",
                                               "missing_true", "leaf_target", "leaf_weight")}

    def leaf(node: dict, target: int) -> int:
        arrays["leaf_target"].append(target)
        arrays["leaf_weight"].append(float(node["leaf_value"]))
        return len(arrays["leaf_weight"]) - 1

    for index, tree in enumerate(dump["tree_info"]):
        target, root = index % per_iteration, tree["tree_structure"]
        arrays["roots"].append(len(arrays["feature"]))
        if "split_index" not in root:  # a single-leaf tree: a split whose branches meet in the same leaf
            position = leaf(root, target)
            for key, value in (("feature", 0), ("split", 0.0), ("true", position), ("true_leaf", 1), ("false", position),
                               ("false_leaf", 1), ("missing_true", 0)):
                arrays[key].append(value)
            continue
        stack: list[tuple[dict, int | None, str]] = [(root, None, "")]
        while stack:
            node, parent, parent_side = stack.pop()
            if node["decision_type"] != "<=":
                raise ModelExportError(f"refusing to export: split type {node['decision_type']!r} (categorical)")
            if node["missing_type"] == "Zero":
                raise ModelExportError("refusing to export: zero_as_missing splits")
            position, threshold = len(arrays["feature"]), float(node["threshold"])
            if parent is not None:
                arrays[parent_side][parent] = position
            arrays["feature"].append(node["split_feature"])
            arrays["split"].append(threshold)
            # LightGBM: NaN takes the default branch when missing_type is NaN, else NaN is compared as 0.0
            arrays["missing_true"].append(int(node["default_left"]) if node["missing_type"] == "NaN"
                                          else int(threshold >= 0.0))
            for side, child in (("true", node["left_child"]), ("false", node["right_child"])):
                is_leaf = "split_index" not in child
                arrays[f"{side}_leaf"].append(int(is_leaf))
                arrays[side].append(leaf(child, target) if is_leaf else -1)
                if not is_leaf:
                    stack.append((child, position, side))
    return arrays


def to_onnx_float64(booster: lgb.Booster) -> onnx.ModelProto:
    """The trees as a float64 ``TreeEnsemble`` (ai.onnx.ml opset 5): exact thresholds, double in and out."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    info = check_exportable(booster)
    arrays = _flatten(info["dump"], info["per_iteration"])
    classifier = info["objective"] == "multiclass"
    n_targets = info["num_class"] if classifier else 1
    tensor = numpy_helper.from_array
    # LightGBM routes |x| <= kZeroThreshold (1e-35f) as 0.0: do the same before the trees
    zeroing = [
        helper.make_node("Constant", [], ["zero_threshold"], value=tensor(np.array(_ZERO_THRESHOLD))),
        helper.make_node("Constant", [], ["zero"], value=tensor(np.array(0.0))),
        helper.make_node("Abs", ["input"], ["magnitude"]),
        helper.make_node("LessOrEqual", ["magnitude", "zero_threshold"], ["is_zero"]),
        helper.make_node("Where", ["is_zero", "zero", "input"], ["routed"]),
    ]
    ensemble = helper.make_node(
        "TreeEnsemble", ["routed"], ["raw"], domain="ai.onnx.ml",
        n_targets=n_targets, aggregate_function=1, post_transform=0,
        tree_roots=arrays["roots"], nodes_featureids=arrays["feature"],
        nodes_modes=tensor(np.zeros(len(arrays["feature"]), dtype=np.uint8)),
        nodes_splits=tensor(np.array(arrays["split"], dtype=np.float64)),
        nodes_truenodeids=arrays["true"], nodes_trueleafs=arrays["true_leaf"],
        nodes_falsenodeids=arrays["false"], nodes_falseleafs=arrays["false_leaf"],
        nodes_missing_value_tracks_true=arrays["missing_true"],
        leaf_targetids=arrays["leaf_target"], leaf_weights=tensor(np.array(arrays["leaf_weight"], dtype=np.float64)))
    nodes = [*zeroing, ensemble]
    inputs = [helper.make_tensor_value_info("input", TensorProto.DOUBLE, [None, info["n_features"]])]
    if classifier:  # a Softmax node: onnxruntime 1.31's TreeEnsemble post_transform=SOFTMAX does not normalise
        nodes.append(helper.make_node("Softmax", ["raw"], ["probabilities"], axis=1))
        nodes.append(helper.make_node("ArgMax", ["probabilities"], ["label"], axis=1, keepdims=0))
        outputs = [helper.make_tensor_value_info("label", TensorProto.INT64, [None]),
                   helper.make_tensor_value_info("probabilities", TensorProto.DOUBLE, [None, n_targets])]
    else:
        nodes.append(helper.make_node("Exp" if info["objective"] in _EXP_OBJECTIVES else "Identity", ["raw"], ["variable"]))
        outputs = [helper.make_tensor_value_info("variable", TensorProto.DOUBLE, [None, 1])]
    graph = helper.make_graph(nodes, "lightgbm_float64", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("ai.onnx.ml", 5)],
                              producer_name="featurestore.training", producer_version="1")
    model.ir_version = 10
    onnx.checker.check_model(model)
    return model


def onnx_session(model: bytes | str | os.PathLike) -> ort.InferenceSession:
    """An onnxruntime session for ``model`` (serialised bytes or a ``model.onnx`` path), tuned for single rows:
    one intra-op and one inter-op thread, sequential execution, warnings off (the float32 classifier's label
    shape warning is noise). The graph optimisation level makes no difference to these graphs (300 trees,
    one row: p50 14.5-14.9 us, p99 ~20 us for none, basic and all, measured alternately): onnxruntime's
    default, all. Training's parity gate and ``serving.scorer`` both run their graphs through this."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    source = model if isinstance(model, bytes) else os.fspath(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def run_onnx(model: bytes, X: np.ndarray, dtype: OnnxDtype, *, batch: int = 100_000) -> np.ndarray:
    """Run a model from this module with onnxruntime (``onnx_session``): regressor (n,), classifier (n, k)."""
    session = onnx_session(model)
    names = [o.name for o in session.get_outputs()]
    wanted = "probabilities" if "probabilities" in names else "variable"
    with np.errstate(over="ignore"):
        X = np.ascontiguousarray(X, dtype=np.float64 if dtype == "float64" else np.float32)
    parts = [session.run([wanted], {"input": X[i:i + batch]})[0] for i in range(0, max(len(X), 1), batch)]
    out = np.concatenate(parts).astype(np.float64)
    return out if wanted == "probabilities" else out.reshape(-1)


@dataclass(frozen=True)
class ParityReport:
    """ONNX vs LightGBM over a test set (``class_mismatches`` only for classifiers)."""

    dtype: str
    rows: int
    max_abs_diff: float
    mean_abs_diff: float
    class_mismatches: int | None
    tolerance: float
    passed: bool


def _parity(booster: lgb.Booster, model: bytes, X: np.ndarray, *, kind: str, dtype: OnnxDtype,
            tolerance: float) -> ParityReport:
    expected = booster.predict(np.asarray(X, dtype=np.float64))
    got = run_onnx(model, X, dtype)
    expected = expected.reshape(got.shape)
    diff = np.abs(got - expected) if expected.size else np.zeros(1)
    mismatches = int((got.argmax(axis=1) != expected.argmax(axis=1)).sum()) if kind == "classifier" else None
    passed = mismatches == 0 if kind == "classifier" else bool(diff.max() <= tolerance)
    return ParityReport(dtype, len(X), float(diff.max()), float(diff.mean()), mismatches, tolerance, passed)


@dataclass(frozen=True)
class OnnxExport:
    """The model to publish, its graph interface as built (opsets, input, outputs), its parity on the test
    set, and the float32-casting parity for the record."""

    model: bytes
    dtype: OnnxDtype
    opsets: dict[str, int]  # domain ("" is ai.onnx) -> version, read from the graph
    input_name: str
    outputs: tuple[str, ...]
    parity: ParityReport
    float32_parity: ParityReport

    def as_dict(self) -> dict[str, Any]:
        return {"input_dtype": self.dtype, "parity": asdict(self.parity), "float32_parity": asdict(self.float32_parity)}


def export_onnx(booster: lgb.Booster, X_test: np.ndarray, *, kind: Literal["regressor", "classifier"],
                dtype: OnnxDtype = "float64", tolerance: float = 1e-5) -> OnnxExport:
    """Convert, check parity on ``X_test`` (every row), and return the model; raise ``ModelExportError``
    when the published conversion differs from LightGBM beyond the gate."""
    if dtype not in ("float64", "float32"):
        raise ModelExportError(f"ONNX input dtype must be 'float64' or 'float32', got {dtype!r}")
    X_test = np.asarray(X_test, dtype=np.float64)
    if len(X_test) == 0:
        raise ModelExportError("refusing to export: the parity test set is empty")
    float32_graph = to_onnx_float32(booster)
    float32_model = float32_graph.SerializeToString()
    float32 = _parity(booster, float32_model, X_test, kind=kind, dtype="float32", tolerance=tolerance)
    if dtype == "float32":
        graph, model, published = float32_graph, float32_model, float32
    else:
        graph = to_onnx_float64(booster)
        model = graph.SerializeToString()
        published = _parity(booster, model, X_test, kind=kind, dtype="float64", tolerance=tolerance)
    if not published.passed:
        what = (f"{published.class_mismatches} of {published.rows} predicted classes differ" if kind == "classifier"
                else f"max abs diff {published.max_abs_diff:.3g} > {tolerance:g} over {published.rows} rows")
        raise ModelExportError(f"refusing to publish the {dtype} ONNX model: {what} between onnxruntime and LightGBM"
                               + (" (float32 thresholds misroute inputs; use the float64 export)" if dtype == "float32" else ""))
    (graph_input,) = graph.graph.input
    return OnnxExport(model, dtype, {o.domain: o.version for o in graph.opset_import}, graph_input.name,
                      tuple(o.name for o in graph.graph.output), published, float32)
