"""A toy model directory in the layout ``training.train`` publishes, for examples, tests and benchmarks.

Real models come from ``featurestore train``. This writes the same serving files (``model.onnx`` from the
project's float64 export, ``model.txt``, ``meta.json``) for a LightGBM regressor trained on the rows
given, with no feature store behind it. The default data: feature ``a`` decides the sign of the target,
feature ``b`` is missing on every 7th row (so the model learns a branch for missing ``b``).

>>> import tempfile
>>> booster = write_toy_model(Path(tempfile.mkdtemp()))
>>> booster.num_trees(), booster.feature_name()
(20, ['toy__a', 'toy__b'])
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from training.onnx_export import to_onnx_float64

if TYPE_CHECKING:
    import lightgbm as lgb

__all__ = ["write_toy_model"]


def write_toy_model(path: Path, *, X: np.ndarray | None = None, y: np.ndarray | None = None,
                    columns: Sequence[tuple[str, str]] = (("toy", "a"), ("toy", "b")), trees: int = 20,
                    versions: Mapping[str, str] | None = None, ttl_seconds: Mapping[str, float] | None = None,
                    name: str = "toy", version: str = "t0", threshold: float | None = None) -> lgb.Booster:
    """Train a regressor on ``X, y`` (input ``k`` is ``columns[k]`` = (view, feature)), write it to ``path``
    (versions default to ``v1``, TTLs to one hour per view) and return the booster."""
    import lightgbm as lgb

    if X is None or y is None:
        X = np.random.default_rng(0).normal(size=(500, 2))
        X[::7, 1] = np.nan
        y = np.where(X[:, 0] > 0, 0.5, -0.5)
    views = list(dict.fromkeys(view for view, _ in columns))
    versions = {view: (versions or {}).get(view, "v1") for view in views}
    ttl = {view: (ttl_seconds or {}).get(view, 3600.0) for view in views}
    names = [f"{view}__{feature}" for view, feature in columns]
    booster = lgb.train({"objective": "regression", "verbosity": -1, "num_threads": 1, "min_data_in_leaf": 5,
                         "seed": 7, "deterministic": True, "force_row_wise": True},
                        lgb.Dataset(X, y, feature_name=names), trees)
    path.mkdir(parents=True, exist_ok=True)
    (path / "model.onnx").write_bytes(to_onnx_float64(booster).SerializeToString())
    (path / "model.txt").write_text(booster.model_to_string())
    meta = {"name": name, "version": version, "kind": "regressor", "feature_names": names, "classes": None,
            "features": [{"name": n, "view": view, "feature": feature, "view_version": versions[view],
                          "timeframe": "1h", "ttl_seconds": ttl[view]} for n, (view, feature) in zip(names, columns, strict=True)],
            "views": [{"name": view, "version": versions[view], "timeframe": "1h"} for view in views],
            "onnx_input_dtype": "float64", "onnx": {"input_name": "input", "outputs": ["variable"]},
            "threshold": threshold}
    (path / "meta.json").write_text(json.dumps(meta, indent=1))
    return booster
