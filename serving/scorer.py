"""The scorer: one published model, one onnxruntime session, one read-only online-store connection.

``load_model`` reads a model directory through its typed contract, ``training.artifact.ModelMeta``.
``Scorer.score(symbols, now=...)`` reads the latest row of every view the model uses for each symbol,
checks it (the skew guard below), lays the values out in the model's feature order and input dtype
(``ModelMeta.onnx.input_dtype``: float64 for published models, float32 supported) and scores every
symbol with one ``session.run``.

The skew guard refuses to score, naming view, symbol and both values, when

- a view's row is missing for a symbol (``MissingFeaturesError``);
- a row's ``view_version`` differs from the version the model was trained on (``VersionSkewError``);
- a row is older than the view's max age, measured against the injected clock ``now``
  (``StaleFeaturesError``). The default is the TTL recorded in ``meta.json``, the TTL the training join
  used: the model saw an older row as null;
- a row is newer than ``now`` (``FutureFeaturesError``): scoring an earlier moment (a replayed bar) with a
  row computed later would use the future, which training's as-of join never does;
- a feature is null (or NaN) and the model never saw it missing in training (``MissingFeaturesError``):
  LightGBM, and our ONNX export, read a missing value as 0 at such splits, a silent imputation;
- a feature is +inf or -inf (``NonFiniteFeaturesError``).

Every refusal names the view and the symbol, and for a value the feature.

A null feature that was missing in training (LightGBM learned a branch for it) is passed as NaN and
listed in ``Score.missing``. A batch is scored whole or refused whole, the error listing every problem.

The session is ``training.onnx_export.onnx_session``, tuned for one row (one thread, sequential), the
one training's parity gate uses; a graph whose input name, input type or outputs differ from
``meta.json`` is refused. Small batches (up to ``BOUND_BATCH`` symbols) run on input and output buffers bound
to the session once per batch size (onnxruntime's IO binding: 9 us a row where ``session.run`` took 16),
under a lock, so one scorer may serve several threads.

A model directory, from a tiny LightGBM model (what ``featurestore train`` publishes, without the
evaluation), then a score:

>>> import tempfile
>>> from datetime import datetime, timezone
>>> import lightgbm as lgb
>>> from featurestore.online import OnlineRow
>>> from featurestore.online.sqlite import SqliteOnlineStore
>>> from training.artifact import FeatureColumn, ModelMeta, OnnxInfo, ViewInfo, write_model
>>> from training.onnx_export import export_onnx
>>> X = np.random.default_rng(0).normal(size=(500, 2)); X[::7, 1] = np.nan  # b: missing in training
>>> booster = lgb.train({"objective": "regression", "verbosity": -1, "num_threads": 1, "min_data_in_leaf": 5},
...                     lgb.Dataset(X, np.where(X[:, 0] > 0, 0.5, -0.5), feature_name=["toy__a", "toy__b"]), 20)
>>> exported = export_onnx(booster, X, kind="regressor")
>>> meta = ModelMeta(name="toy", version="t0", kind="regressor", views=(ViewInfo("toy", "v1", "1h"),),
...                  features=tuple(FeatureColumn(f"toy__{f}", "toy", f, "v1", "1h", 3600.0) for f in "ab"),
...                  onnx=OnnxInfo.from_export(exported))
>>> model = write_model(Path(tempfile.mkdtemp()), meta, onnx_model=exported.model, model_text=booster.model_to_string())
>>> t = datetime(2024, 5, 1, 12, tzinfo=timezone.utc)
>>> with SqliteOnlineStore(Path(tempfile.mkdtemp()) / "online.sqlite") as online:
...     _ = online.put_many([OnlineRow("toy", "BTC/USDT", t, "v1", {"a": 0.5, "b": None}, t)])
...     scorer = Scorer(load_model(model), online)
...     (score,) = scorer.score(["BTC/USDT"], now=t)
>>> score.symbol, score.missing, score.score == float(booster.predict(np.array([[0.5, np.nan]]))[0])
('BTC/USDT', ('toy__b',), True)
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from operator import attrgetter, itemgetter
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from featurestore.errors import (
    FeatureStoreError,
    FutureFeaturesError,
    MissingFeaturesError,
    ModelRegistryError,
    NonFiniteFeaturesError,
    StaleFeaturesError,
    VersionSkewError,
)
from featurestore.online import OnlineRow, OnlineStore, connect
from featurestore.store import Store
from training.artifact import ModelMeta
from training.model import classifier_signal
from training.onnx_export import onnx_session

__all__ = ["BOUND_BATCH", "Model", "Score", "Scorer", "load_model", "open_scorer", "resolve_model_dir"]

_INPUT_TYPES = {"float64": "tensor(double)", "float32": "tensor(float)"}  # onnxruntime's names of the dtypes
_ZERO = timedelta(0)
_MISSING_NONE = 0  # LightGBM decision_type bits 2-3: 0 None (NaN read as 0), 1 Zero, 2 NaN (learned branch)
BOUND_BATCH = 64  # batches of up to this many symbols keep buffers bound to the session (a few KB each)


@dataclass(frozen=True)
class Model:
    """A loaded model directory: its ``meta.json`` (``meta``) and what serving derives from ``model.txt``."""

    meta: ModelMeta
    path: Path
    no_missing: frozenset[str]  # features never missing in training: null would be read as 0

    # What serving reads, straight from ``meta``:
    name = property(attrgetter("meta.name"))
    version = property(attrgetter("meta.version"))
    kind = property(attrgetter("meta.kind"))  # "regressor" or "classifier"
    feature_names = property(attrgetter("meta.feature_names"))  # input order, "view__feature"
    columns = property(attrgetter("meta.columns"))  # (view, feature) of each input column
    view_versions = property(attrgetter("meta.view_versions"))  # view -> version trained on; the primary first
    ttl = property(attrgetter("meta.ttl"))  # view -> TTL of the training join
    dtype = property(attrgetter("meta.onnx.input_dtype"))  # "float64" or "float32"
    input_name = property(attrgetter("meta.onnx.input_name"))
    threshold = property(attrgetter("meta.threshold"))  # the backtest's |score| threshold, when recorded
    classes = property(attrgetter("meta.classes"))  # a classifier's classes, in its probabilities' order


def _never_missing(model_text: str, names: Sequence[str]) -> frozenset[str]:
    """Features with a split whose missing type is None (``model.txt``: split_feature / decision_type)."""
    found = set()
    splits = re.findall(r"^split_feature=(.*)$", model_text, re.MULTILINE)
    decisions = re.findall(r"^decision_type=(.*)$", model_text, re.MULTILINE)
    for features, types in zip(splits, decisions, strict=True):
        found.update(names[int(f)] for f, t in zip(features.split(), types.split(), strict=True)
                     if (int(t) >> 2) & 3 == _MISSING_NONE)
    return frozenset(found)


def load_model(path: str | Path) -> Model:
    """Read a model directory written by ``training.train`` (``training.artifact.write_model``)."""
    path = Path(path)
    missing = [name for name in ("meta.json", "model.onnx", "model.txt") if not (path / name).is_file()]
    if missing:
        raise ModelRegistryError(f"{path} is not a complete model directory: missing {', '.join(missing)} "
                                 f"(see `featurestore models list`)")
    meta = ModelMeta.read(path)
    return Model(meta, path, _never_missing((path / "model.txt").read_text(), meta.feature_names))


def resolve_model_dir(store: Store, model: str, *, version: str | None = None, models: Path | None = None) -> Path:
    """``model`` is a directory (it contains '/') or a registry name (``version``, else production)."""
    from training.registry import models_root, production_version, version_path

    if "/" in model:
        if version is not None:
            raise ModelRegistryError(f"--version applies to a model name, not to the directory {model}")
        return Path(model)
    root = models_root(store, models)
    version = version or production_version(root, model)
    if version is None:
        raise ModelRegistryError(f"model {model!r} has no production version under {root}; promote one "
                                 f"(featurestore models promote {model} VERSION) or name a --version")
    return version_path(root, model, version)  # raises, listing what is stored, when absent


class Score(NamedTuple):
    """One symbol's score and what it was computed from (a tuple: 4x cheaper to build than a frozen dataclass)."""

    symbol: str
    ts: datetime  # the primary view's row time: when the decision is taken
    score: float  # regressor: the prediction; classifier: P(up) - P(down), 0 when neutral is the likeliest class
    rows: dict[str, OnlineRow]  # view -> the row used
    inputs: tuple[float, ...]  # the model's input row, as fed (NaN for missing values)
    names: tuple[str, ...]  # the model's input names, "view__feature"
    missing: tuple[str, ...]  # inputs fed as NaN

    @property
    def features(self) -> dict[str, float | None]:
        """Input name -> value fed to the model (None: missing, fed as NaN)."""
        values = dict(zip(self.names, self.inputs, strict=True))
        values.update(dict.fromkeys(self.missing))
        return values


def _session(model: Model) -> Any:
    """The graph's session, refused when its input or outputs are not the ones ``meta.json`` records."""
    session = onnx_session(model.path / "model.onnx")
    (graph_input,) = session.get_inputs()
    if (graph_input.name, graph_input.type) != (model.input_name, _INPUT_TYPES[model.dtype]):
        raise ModelRegistryError(f"{model.path}/model.onnx takes {graph_input.name!r} {graph_input.type}, but "
                                 f"meta.json says {model.input_name!r} {model.dtype}")
    outputs = tuple(o.name for o in session.get_outputs())
    if outputs != model.meta.onnx.outputs:
        raise ModelRegistryError(f"{model.path}/model.onnx outputs {list(outputs)}, but meta.json says "
                                 f"{list(model.meta.onnx.outputs)}")
    return session


def _getter(features: Sequence[str]) -> Callable[[Mapping[str, float | None]], tuple]:
    """A function returning the values of ``features`` of a row's features, as a tuple (KeyError when absent)."""
    if len(features) == 1:
        (feature,) = features
        return lambda values: (values[feature],)
    return itemgetter(*features)


class _Feed:
    """An input and an output buffer for ``rows`` rows, bound to ``session`` once: a run reads ``X`` and writes
    ``out``, with none of ``session.run``'s per-call checks and allocations."""

    def __init__(self, session: Any, rows: int, columns: int, dtype: np.dtype, input_name: str, output: str,
                 out: np.ndarray) -> None:
        from onnxruntime import OrtValue

        self.X = np.zeros((rows, columns), dtype=dtype)
        self.out = np.empty((rows, *out.shape[1:]), dtype=out.dtype)
        self.binding = session.io_binding()
        self.binding.bind_ortvalue_input(input_name, OrtValue.ortvalue_from_numpy(self.X))
        self.binding.bind_ortvalue_output(output, OrtValue.ortvalue_from_numpy(self.out))


class Scorer:
    """Scores symbols with ``model`` from ``online`` (which ``close()`` closes). ``max_age``: per view, or one
    age for every view; views not named keep their TTL."""

    def __init__(self, model: Model, online: OnlineStore, *,
                 max_age: Mapping[str, timedelta] | timedelta | None = None) -> None:
        if isinstance(max_age, timedelta):
            max_age = dict.fromkeys(model.view_versions, max_age)
        unknown = sorted(set(max_age or {}) - set(model.view_versions))
        if unknown:
            raise FeatureStoreError(f"max age given for {unknown}, but model {model.name} uses views "
                                    f"{list(model.view_versions)}")
        self.model, self.online = model, online
        self.max_age = {**model.ttl, **(max_age or {})}
        self.session = _session(model)
        self._views = list(model.view_versions)
        self._primary = self._views[0]
        features = {view: [f for v, f in model.columns if v == view] for view in self._views}
        # per view, in the model's view order: (view, version trained on, max age, its input values' getter, names)
        self._guard = [(view, version, self.max_age[view], _getter(features[view]), features[view])
                       for view, version in model.view_versions.items()]
        self._blank = {view: (0.0,) * len(features[view]) for view in self._views}  # a refused view's inputs
        # the input columns of the views' values laid end to end (None: in that order already)
        order = [j for view in self._views for j, (v, _) in enumerate(model.columns) if v == view]
        self._order = None if order == list(range(len(order))) else np.array(order)
        self._classifier = model.kind == "classifier"
        self._output = "probabilities" if self._classifier else "variable"
        self._names, self._input, self._dtype = model.feature_names, model.input_name, np.dtype(model.dtype)
        # one output, for the shape and dtype of the output buffers
        self._example = self.session.run([self._output], {self._input: np.zeros((1, len(self._names)), self._dtype)})[0]
        self._feeds: dict[int, _Feed] = {}
        self._lock = threading.Lock()

    def __enter__(self) -> Scorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.online.close()

    def _read(self, symbols: list[str], given: Mapping[str, Mapping[str, OnlineRow]] | None
              ) -> list[dict[str, OnlineRow]]:
        """Per symbol, view -> row (views without a row left out): ``given`` views as given, the others from the
        online store (one query for one symbol, one query per view for several)."""
        wanted = [view for view in self._views if view not in given] if given else self._views
        if len(symbols) == 1 and wanted:
            found = [self.online.get_views(wanted, symbols[0])]
        else:
            read = [self.online.get_many(view, symbols) for view in wanted]
            found = [{view: rows[symbol] for view, rows in zip(wanted, read, strict=True) if symbol in rows}
                     for symbol in symbols]
        for view in given or ():
            if view in self.model.view_versions:
                rows = given[view]
                for symbol, rows_of in zip(symbols, found, strict=True):
                    if symbol in rows:
                        rows_of[view] = rows[symbol]
        return found

    def _problem(self, view: str, symbol: str, row: OnlineRow | None, now: datetime) -> tuple[type, str]:
        """Why ``row`` cannot be scored: missing, another version, from the future, or too old."""
        if row is None:
            return MissingFeaturesError, f"no online row of view {view!r} for {symbol}"
        trained = self.model.view_versions[view]
        if row.view_version != trained:
            return VersionSkewError, (f"view {view!r} for {symbol}: the online row is version {row.view_version}, "
                                      f"model {self.model.name} {self.model.version} was trained on version {trained}")
        if row.ts > now:
            return FutureFeaturesError, (f"view {view!r} for {symbol}: the online row at {row.ts.isoformat()} is "
                                         f"after the scoring time {now.isoformat()}")
        return StaleFeaturesError, (f"view {view!r} for {symbol}: the online row at {row.ts.isoformat()} is "
                                    f"{now - row.ts} old at {now.isoformat()}, older than the max age {self.max_age[view]} "
                                    f"(to score an earlier moment, give it with --as-of; to accept older rows, --max-age)")

    def score(self, symbols: Sequence[str], *, now: datetime,
              given: Mapping[str, Mapping[str, OnlineRow]] | None = None) -> list[Score]:
        """Score ``symbols`` (one ONNX run), or raise naming every problem. ``given``: per view, rows to use
        instead of reading the online store (the dataflow scores the rows it has just computed)."""
        symbols = list(symbols)
        if not symbols:
            return []
        found = self._read(symbols, given)
        values: list[tuple] = [()] * len(symbols)  # per symbol, its views' input values end to end
        problems: list[tuple[type, str]] = []
        for view, trained, limit, getter, features in self._guard:
            blank = self._blank[view]
            for i, symbol in enumerate(symbols):
                row = found[i].get(view)
                if row is None or row.view_version != trained or not _ZERO <= now - row.ts <= limit:
                    problems.append(self._problem(view, symbol, row, now))
                    values[i] += blank
                    continue
                try:
                    values[i] += getter(row.features)  # None -> NaN below
                except KeyError:
                    absent = [f for f in features if f not in row.features]
                    problems.append((VersionSkewError, f"view {view!r} for {symbol}: the online row (version "
                                                       f"{row.view_version}) has no feature(s) {absent}"))
                    values[i] += blank
        with self._lock:
            feed = self._feeds.get(len(symbols)) or self._feed(len(symbols))
            X = feed.X
            if self._order is not None:
                X[:, self._order] = values
            elif len(values) == 1:
                X[0] = values[0]  # one row: half the time of X[:] = values
            else:
                X[:] = values
            inputs = X.tolist()  # as fed: NaN for None, the model's dtype
            missing = self._missing(symbols, inputs, problems)
            if problems:
                raise problems[0][0]("refusing to score: " + "; ".join(message for _, message in problems))
            self.session.run_with_iobinding(feed.binding)
            out = feed.out
            scores = (classifier_signal(out, self.model.classes) if self._classifier else out.ravel()).tolist()
        names, views, primary = self._names, self._views, self._primary
        return [Score(symbol, rows[primary].ts, scores[i], {view: rows[view] for view in views}, tuple(inputs[i]),
                      names, missing[i]) for i, (symbol, rows) in enumerate(zip(symbols, found, strict=True))]

    def _feed(self, rows: int) -> _Feed:
        """Buffers for a batch of ``rows`` symbols, bound to the session (kept for batches up to ``BOUND_BATCH``)."""
        feed = _Feed(self.session, rows, len(self._names), self._dtype, self._input, self._output, self._example)
        if rows <= BOUND_BATCH:
            self._feeds[rows] = feed
        return feed

    def _missing(self, symbols: list[str], inputs: list[list[float]], problems: list[tuple[type, str]]
                 ) -> list[tuple[str, ...]]:
        """Per symbol, the inputs fed as NaN (``inputs``: the rows as fed); a problem for each the model never saw
        missing in training, and, listed first, for each infinite value. Plain Python on the row's floats: numpy's
        isnan/nonzero over a one-row array cost 20 us a call."""
        if all(map(math.isfinite, map(sum, inputs))):  # a sum that overflows falls through to the loop below
            return [()] * len(symbols)
        names, columns, model = self._names, self.model.columns, self.model
        missing, infinite, never_missing = [], [], []
        for symbol, row in zip(symbols, inputs, strict=True):
            nulls = []
            for j, value in enumerate(row):
                if value != value:  # NaN
                    nulls.append(names[j])
                    if names[j] in model.no_missing:
                        never_missing.append((MissingFeaturesError, (
                            f"view {columns[j][0]!r} for {symbol}: feature {columns[j][1]!r} is null and model "
                            f"{model.name} never saw it missing in training (LightGBM would read it as 0)")))
                elif math.isinf(value):
                    infinite.append((NonFiniteFeaturesError, f"view {columns[j][0]!r} for {symbol}: feature "
                                                             f"{columns[j][1]!r} is {value}, not a finite number"))
            missing.append(tuple(nulls))
        problems.extend(infinite + never_missing)
        return missing

    def freshness(self, *, now: datetime) -> dict[str, list[dict[str, Any]]]:
        """Per view, every online row's age against its max age and its version against the model's."""
        return {view: [{"symbol": row.symbol, "ts": row.ts.isoformat(), "age_seconds": (now - row.ts).total_seconds(),
                        "max_age_seconds": self.max_age[view].total_seconds(),
                        "fresh": now - row.ts <= self.max_age[view], "view_version": row.view_version,
                        "version_matches": row.view_version == trained}
                       for row in self.online.rows(view)]
                for view, trained in self.model.view_versions.items()}


def open_scorer(store: Store, model: str, *, version: str | None = None, models: Path | None = None,
                max_age: Mapping[str, timedelta] | timedelta | None = None) -> Scorer:
    """A scorer on ``store``'s online store for a model name (production version) or directory."""
    loaded = load_model(resolve_model_dir(store, model, version=version, models=models))
    return Scorer(loaded, connect(store.online_url, readonly=True), max_age=max_age)

