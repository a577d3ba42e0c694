"""LightGBM models: a regressor (target: a log return) and a three-class classifier (down, neutral, up).

Reproducible by construction: a fixed ``seed`` (LightGBM derives its bagging, feature-fraction and data
seeds from it), ``deterministic=True``, ``force_row_wise=True`` (no timing-dependent layout choice) and a
fixed ``num_threads``: the same rows and parameters give a byte-identical model text. Early stopping
watches the latest ``valid_fraction`` of the periods (time-ordered; training rows whose label reaches
into that slice are purged); the returned booster keeps only the trees up to the best iteration. No
hyperparameter search.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> X = rng.normal(size=(400, 3)); y = 0.5 * X[:, 0] + 0.1 * rng.normal(size=400)
>>> booster = fit_model(X, y, feature_names=["a", "b", "c"], params=ModelParams(num_boost_round=20))
>>> booster.num_trees() <= 20, booster.feature_name()
(True, ['a', 'b', 'c'])
>>> encode_classes(np.array([-1, 0, 1])).tolist(), decode_classes(np.array([2, 0])).tolist()
([0, 1, 2], [1, -1])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from featurestore.errors import TrainingDataError
from training.splits import purge, to_ns

if TYPE_CHECKING:
    import lightgbm as lgb

__all__ = ["CLASSES", "ModelKind", "ModelParams", "classifier_signal", "decode_classes", "encode_classes", "fit_model",
           "predict", "signal"]

ModelKind = Literal["regressor", "classifier"]
#: Class labels of the classifier, in the order of its probability columns.
CLASSES: tuple[int, ...] = (-1, 0, 1)


@dataclass(frozen=True)
class ModelParams:
    """Training parameters (constructor stores them; nothing is tuned)."""

    kind: ModelKind = "regressor"
    num_boost_round: int = 300
    learning_rate: float = 0.05
    num_leaves: int = 31
    min_data_in_leaf: int = 100
    feature_fraction: float = 0.8
    bagging_fraction: float = 0.8
    bagging_freq: int = 1
    lambda_l2: float = 1.0
    early_stopping_rounds: int = 30
    valid_fraction: float = 0.2
    seed: int = 7
    num_threads: int = 2
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in ("regressor", "classifier"):
            raise TrainingDataError(f"model kind must be 'regressor' or 'classifier', got {self.kind!r}")
        if not 0 <= self.valid_fraction < 1:
            raise TrainingDataError(f"valid_fraction must be in [0, 1), got {self.valid_fraction}")

    def lightgbm_params(self) -> dict[str, Any]:
        """The parameter dict handed to ``lightgbm.train``."""
        objective = {"objective": "regression"} if self.kind == "regressor" else {
            "objective": "multiclass", "num_class": len(CLASSES)}
        return {
            **objective, "learning_rate": self.learning_rate, "num_leaves": self.num_leaves,
            "min_data_in_leaf": self.min_data_in_leaf, "feature_fraction": self.feature_fraction,
            "bagging_fraction": self.bagging_fraction, "bagging_freq": self.bagging_freq,
            "lambda_l2": self.lambda_l2, "seed": self.seed, "num_threads": self.num_threads,
            "deterministic": True, "force_row_wise": True, "verbosity": -1, **dict(self.extra),
        }

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "extra": dict(self.extra)}


def encode_classes(labels: np.ndarray) -> np.ndarray:
    """-1, 0, 1 -> 0, 1, 2 (the classifier's class indices)."""
    labels = np.asarray(labels)
    if not np.isin(labels, CLASSES).all():
        raise TrainingDataError(f"class labels must be in {CLASSES}, got {sorted(set(labels.tolist()) - set(CLASSES))}")
    return (labels + 1).astype(np.int64)


def decode_classes(indices: np.ndarray) -> np.ndarray:
    """0, 1, 2 -> -1, 0, 1."""
    return np.asarray(indices).astype(np.int64) - 1


def fit_model(X: np.ndarray, y: np.ndarray, *, feature_names: Sequence[str], params: ModelParams,
              weight: np.ndarray | None = None, event_ts: object = None, label_end: object = None) -> lgb.Booster:
    """Train on rows in time order (``event_ts`` if given, else as given); return the booster truncated to
    its best iteration. Classifier targets are -1/0/1; regressor targets are finite floats."""
    import lightgbm as lgb


    X, y = np.asarray(X, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] != y.shape[0] or X.shape[1] != len(feature_names):
        raise TrainingDataError(f"X {X.shape}, y {y.shape} and {len(feature_names)} feature names do not match")
    if not np.isfinite(y).all():
        raise TrainingDataError(f"{int((~np.isfinite(y)).sum())} target value(s) are null or not finite; drop them first")
    if X.shape[0] < 10:
        raise TrainingDataError(f"only {X.shape[0]} training rows; need at least 10")
    target = encode_classes(y.astype(np.int64)) if params.kind == "classifier" else y
    ts = to_ns(event_ts) if event_ts is not None else np.arange(X.shape[0], dtype=np.float64)
    end = to_ns(label_end) if label_end is not None else ts
    order = np.argsort(ts, kind="stable")
    fit_rows, valid_rows = order, order[:0]
    if params.valid_fraction > 0 and params.early_stopping_rounds > 0:
        periods = np.unique(ts)
        cut = periods[int(periods.size * (1 - params.valid_fraction))] if periods.size > 1 else np.inf
        valid_rows = order[ts[order] >= cut]
        fit_rows = purge(order[ts[order] < cut], valid_rows, ts, end)
        if fit_rows.size < 10 or valid_rows.size == 0:
            fit_rows, valid_rows = order, order[:0]

    def dataset(rows: np.ndarray, reference: lgb.Dataset | None = None) -> lgb.Dataset:
        return lgb.Dataset(X[rows], target[rows], weight=None if weight is None else np.asarray(weight)[rows],
                           feature_name=list(feature_names), reference=reference, free_raw_data=True,
                           params={"verbosity": -1, "seed": params.seed})

    train_set = dataset(fit_rows)
    valid_sets = [dataset(valid_rows, train_set)] if valid_rows.size else None
    callbacks = [lgb.early_stopping(params.early_stopping_rounds, verbose=False)] if valid_sets else None
    booster = lgb.train(params.lightgbm_params(), train_set, num_boost_round=params.num_boost_round,
                        valid_sets=valid_sets, callbacks=callbacks)
    best = booster.best_iteration if valid_sets and booster.best_iteration > 0 else booster.current_iteration()
    return lgb.Booster(model_str=booster.model_to_string(num_iteration=best))


def predict(booster: lgb.Booster, X: np.ndarray, kind: ModelKind) -> np.ndarray:
    """Regressor: predicted returns (n,). Classifier: class probabilities (n, 3) in ``CLASSES`` order."""
    out = booster.predict(np.asarray(X, dtype=np.float64))
    return out.reshape(-1, len(CLASSES)) if kind == "classifier" else out.reshape(-1)


def classifier_signal(probabilities: np.ndarray, classes: Sequence[int] = CLASSES) -> np.ndarray:
    """A classifier's score: ``P(up) - P(down)`` where up or down is the likeliest class, and 0 where the neutral
    class is (ties included), so that a neutral prediction takes no side, in the backtest as in serving.
    ``probabilities`` has one column per class of ``classes`` (-1 and 1 among them).

    >>> classifier_signal(np.array([[0.1, 0.2, 0.7], [0.3, 0.5, 0.2], [0.4, 0.4, 0.2], [0.5, 0.25, 0.25]])).tolist()
    [0.6, 0.0, 0.0, -0.25]
    """
    classes = list(classes)
    up, down = probabilities[:, classes.index(1)], probabilities[:, classes.index(-1)]
    score = up - down
    if 0 in classes:
        score = np.where(probabilities[:, classes.index(0)] >= np.maximum(up, down), 0.0, score)
    return score


def signal(prediction: np.ndarray, kind: ModelKind) -> np.ndarray:
    """A score whose sign is the trade direction: the predicted return, or ``classifier_signal``."""
    return classifier_signal(prediction) if kind == "classifier" else prediction
