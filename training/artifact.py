"""A model directory's contract: ``meta.json`` read and written as one typed object, ``ModelMeta``.

``training.train`` builds a ``ModelMeta`` and ``write_model`` writes the serving files from it
(``model.onnx``, ``model.txt``, ``meta.json``, ``features.json``); ``serving.scorer`` reads it back with
``ModelMeta.read``. Nothing else parses ``meta.json``.

``meta.json`` holds ``"format": 4`` and every field below; a field typed ``X | None`` is written as
``null`` when it was not recorded (``label``, ``training``, ``backtest``, ``validation`` and ``reference``
for a model not trained by ``training.train``; ``classes`` for a regressor). ``from_json`` refuses a
missing, unknown or ill-typed field with a ``ModelRegistryError`` naming the file and the field
(``training.codec``). Format 3 is format 4 without ``validation`` (models published before the
cross-validation was recorded: read as none), format 2 also without ``reference`` (before reference
distributions); a file without ``format`` is the layout written before this module, read by
``_upgrade_legacy`` (the only place that guesses). ``reference`` points to ``reference.json``, the training
set's distributions (``training.reference``), by name and sha256.

>>> meta = ModelMeta(name="toy", version="t0", kind="regressor", views=(ViewInfo("toy", "v1", "1h"),),
...                  features=(FeatureColumn("toy__a", "toy", "a", "v1", "1h", 3600.0),),
...                  onnx=OnnxInfo({"": 21, "ai.onnx.ml": 5}, "input", "float64", ("variable",)), threshold=0.1)
>>> ModelMeta.from_json(meta.to_json()) == meta, meta.feature_names, meta.view_versions, meta.ttl["toy"]
(True, ('toy__a',), {'toy': 'v1'}, datetime.timedelta(seconds=3600))
>>> ModelMeta.from_json(meta.to_json().replace('"float64"', '"float16"'))
Traceback (most recent call last):
...
featurestore.errors.ModelRegistryError: meta.json: field 'onnx.input_dtype' must be one of 'float64', 'float32', got 'float16'
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Any, get_args

from featurestore.atomic import write_bytes_atomic
from featurestore.errors import ModelRegistryError
from training.codec import decode, encode
from training.model import ModelKind
from training.onnx_export import OnnxDtype, OnnxExport, ParityReport
from training.reference import ModelReference, read_reference
from training.splits import CvScheme

__all__ = ["META_FORMAT", "BacktestSummary", "FeatureColumn", "LabelInfo", "ModelMeta", "OnnxInfo", "ReferenceFile",
           "TrainingInfo", "Validation", "ViewInfo", "write_model"]

#: The ``format`` written in ``meta.json``; 3 (no ``validation``) and 2 (nor ``reference``) are read too, a file
#: without one is the legacy layout (``_upgrade_legacy``).
META_FORMAT = 4


@dataclass(frozen=True)
class FeatureColumn:
    """One input column of the model, in input order."""

    name: str  # "view__feature"
    view: str
    feature: str
    view_version: str  # the view's version the model was trained on
    timeframe: str
    ttl_seconds: float  # max age of the view's row in the training join


@dataclass(frozen=True)
class ViewInfo:
    """A feature view the model reads; the first one is the primary view (its rows are the decisions)."""

    name: str
    version: str
    timeframe: str


@dataclass(frozen=True)
class LabelInfo:
    """The label the model learned (``training.labels``)."""

    spec: str  # e.g. "future_ret:h=1"
    kind: str
    h: int
    target: str  # the column the model was fitted on
    bars_timeframe: str
    end_column: str


@dataclass(frozen=True)
class TrainingInfo:
    """The rows the published model was fitted on."""

    rows: int
    symbols: tuple[str, ...]
    first_event_ts: datetime
    last_event_ts: datetime
    data_fingerprint: str  # sha256 of the training frame (``training.train.frame_fingerprint``)
    weights_column: str
    trees: int


@dataclass(frozen=True)
class Validation:
    """How the out-of-sample figures (metrics, backtest, threshold) were measured (``training.splits.cv_folds``):
    the scheme, its test blocks, and the embargo around each, as a span and in bars of the label's timeframe.
    Training rows are purged on the label's end column (``LabelInfo.end_column``)."""

    scheme: CvScheme
    folds: int
    embargo_seconds: float
    embargo_bars: float


@dataclass(frozen=True)
class BacktestSummary:
    """The out-of-sample backtest beside buy-and-hold (``training.evaluation.backtest``; the full run is in
    ``report.json``)."""

    model: dict[str, Any]
    buy_and_hold: dict[str, Any]


@dataclass(frozen=True)
class OnnxInfo:
    """The graph in ``model.onnx``: what ``training.onnx_export`` produced and measured."""

    opsets: dict[str, int]  # domain ("" is ai.onnx) -> version; empty: not recorded (legacy toy models)
    input_name: str
    input_dtype: OnnxDtype
    outputs: tuple[str, ...]
    parity: ParityReport | None = None  # the published graph against LightGBM, on the out-of-sample rows
    float32_parity: ParityReport | None = None  # what float32 inputs would have given, for the record

    @classmethod
    def from_export(cls, exported: OnnxExport) -> OnnxInfo:
        return cls(dict(exported.opsets), exported.input_name, exported.dtype, tuple(exported.outputs),
                   exported.parity, exported.float32_parity)


@dataclass(frozen=True)
class ReferenceFile:
    """Where the model's reference distributions are (``training.reference``): a file in the model directory,
    and its sha256."""

    path: str
    sha256: str


def _expected_outputs(kind: str) -> tuple[str, ...]:
    return ("label", "probabilities") if kind == "classifier" else ("variable",)


@dataclass(frozen=True, kw_only=True)
class ModelMeta:
    """Everything known about a published model; ``meta.json`` is ``to_json()`` of it.

    Checked when built: feature names are ``view__feature`` and unique, every feature's view is listed
    in ``views`` with the same version and timeframe, one TTL per view, every view has a feature, a
    classifier has ``classes`` holding -1 and 1 (a regressor none), and the ONNX outputs fit the kind.
    """

    name: str
    version: str
    kind: ModelKind
    trained_at: datetime | None = None
    features: tuple[FeatureColumn, ...]  # the model's input columns, in order
    views: tuple[ViewInfo, ...]
    label: LabelInfo | None = None
    classes: tuple[int, ...] | None = None  # the classifier's classes, in the order of its probabilities
    training: TrainingInfo | None = None
    params: dict[str, Any] = dataclasses.field(default_factory=dict)  # ``training.model.ModelParams.as_dict()``
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)  # out-of-sample prediction metrics
    backtest: BacktestSummary | None = None
    validation: Validation | None = None  # the cross-validation behind metrics and backtest; None: not recorded
    onnx: OnnxInfo
    threshold: float | None = None  # |score| above which a signal is LONG / SHORT (the backtest's); None: 0
    libraries: dict[str, str] = dataclasses.field(default_factory=dict)  # package -> version at training
    reference: ReferenceFile | None = None  # the training set's distributions; None: published before them

    def __post_init__(self) -> None:
        _check(self)

    # --- derived views, what serving reads ------------------------------------------------------

    @cached_property
    def feature_names(self) -> tuple[str, ...]:
        """The model's input names, in input order."""
        return tuple(f.name for f in self.features)

    @cached_property
    def columns(self) -> tuple[tuple[str, str], ...]:
        """(view, feature) of each input column."""
        return tuple((f.view, f.feature) for f in self.features)

    @cached_property
    def view_versions(self) -> dict[str, str]:
        """View -> the version trained on, the primary view first."""
        return {v.name: v.version for v in self.views}

    @cached_property
    def ttl(self) -> dict[str, timedelta]:
        """View -> the TTL of the training join (the scorer's default max age)."""
        return {f.view: timedelta(seconds=f.ttl_seconds) for f in self.features}

    # --- JSON -------------------------------------------------------------------------------------

    def to_json(self) -> str:
        """``meta.json``'s text: ``format`` first, then every field; NaN and infinities become null."""
        return json.dumps({"format": META_FORMAT, **encode(self)}, indent=1, allow_nan=False)

    def features_json(self) -> str:
        """``features.json``'s text: the input columns and their order (the same rows as ``meta.json``)."""
        return json.dumps({"features": encode(self.features), "order": list(self.feature_names)}, indent=1)

    @classmethod
    def from_json(cls, text: str, *, path: Path | None = None) -> ModelMeta:
        """Parse and check ``meta.json`` (``path`` names it in errors; for the legacy layout its directory
        may hold ``report.json``)."""
        where = str(path) if path is not None else "meta.json"
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ModelRegistryError(f"{where}: not JSON ({exc})") from None
        try:
            if not isinstance(data, dict):
                raise ModelRegistryError(f"must hold a JSON object, got {type(data).__name__}")
            if "format" not in data:
                data = _upgrade_legacy(data, None if path is None else Path(path).parent)
            elif data["format"] in (2, 3):  # published before the cross-validation (2: and reference) was recorded
                data = {"reference": None, **data, "validation": None}
            elif data["format"] != META_FORMAT:
                raise ModelRegistryError(f"field 'format' is {data['format']!r}: this version of featurestore reads "
                                         f"formats 2 to {META_FORMAT} and the legacy layout; upgrade it to read this "
                                         f"model")
            return decode(cls, {k: v for k, v in data.items() if k != "format"}, "", error=ModelRegistryError,
                          schema=f"format {META_FORMAT}")
        except ModelRegistryError as exc:
            raise ModelRegistryError(f"{where}: {exc}") from None

    @classmethod
    def read(cls, directory: str | Path) -> ModelMeta:
        """``<directory>/meta.json``."""
        path = Path(directory) / "meta.json"
        if not path.is_file():
            raise ModelRegistryError(f"{path} does not exist: {directory} is not a model directory")
        return cls.from_json(path.read_text(), path=path)

    def read_reference(self, directory: str | Path) -> ModelReference | None:
        """The reference distributions in ``directory`` (None for a model published without them)."""
        if self.reference is None:
            return None
        if self.reference.path != Path(self.reference.path).name:
            raise ModelRegistryError(f"field 'reference.path' is {self.reference.path!r}: a file name in the model "
                                     f"directory")
        return read_reference(Path(directory) / self.reference.path, self.reference.sha256)

    def write(self, directory: str | Path) -> None:
        """``<directory>/meta.json`` and ``<directory>/features.json``, each replaced atomically."""
        directory = Path(directory)
        write_bytes_atomic(self.to_json().encode(), directory / "meta.json")
        write_bytes_atomic(self.features_json().encode(), directory / "features.json")


def write_model(directory: str | Path, meta: ModelMeta, *, onnx_model: bytes, model_text: str) -> Path:
    """The serving files of a model directory: ``model.onnx``, ``model.txt`` (LightGBM's text), ``meta.json``,
    ``features.json``. ``training.registry.publish`` makes a version appear whole; this writes the files."""
    directory = Path(directory)
    write_bytes_atomic(onnx_model, directory / "model.onnx")
    write_bytes_atomic(model_text.encode(), directory / "model.txt")
    meta.write(directory)
    return directory


def _check(meta: ModelMeta) -> None:
    """The cross-field rules of ``ModelMeta`` (its docstring); raise naming the first field that breaks one."""
    views = {v.name: v for v in meta.views}
    if len(views) != len(meta.views):
        raise ModelRegistryError(f"field 'views' names a view twice: {[v.name for v in meta.views]}")
    seen: dict[str, int] = {}
    ttl: dict[str, float] = {}
    for i, f in enumerate(meta.features):
        where = f"features[{i}]"
        if f.name != f"{f.view}__{f.feature}":
            raise ModelRegistryError(f"field '{where}.name' is {f.name!r}, expected '{f.view}__{f.feature}' (view__feature)")
        if f.name in seen:
            raise ModelRegistryError(f"field '{where}.name': {f.name!r} is also features[{seen[f.name]}]")
        seen[f.name] = i
        view = views.get(f.view)
        if view is None:
            raise ModelRegistryError(f"field '{where}.view' is {f.view!r}, not one of 'views' ({', '.join(views)})")
        if (f.view_version, f.timeframe) != (view.version, view.timeframe):
            raise ModelRegistryError(f"field '{where}': view {f.view!r} version {f.view_version} {f.timeframe}, but "
                                     f"'views' says version {view.version} {view.timeframe}")
        if ttl.setdefault(f.view, f.ttl_seconds) != f.ttl_seconds:
            raise ModelRegistryError(f"field '{where}.ttl_seconds' is {f.ttl_seconds:g}, another feature of view "
                                     f"{f.view!r} says {ttl[f.view]:g}: one TTL per view")
    if not meta.features:
        raise ModelRegistryError("field 'features' is empty: a model has at least one input")
    unused = [name for name in views if name not in ttl]
    if unused:
        raise ModelRegistryError(f"field 'views' lists {unused}, which no feature uses")
    if meta.kind == "classifier" and not (meta.classes and -1 in meta.classes and 1 in meta.classes):
        raise ModelRegistryError(f"field 'classes' is {meta.classes!r}: a classifier needs its classes, -1 and 1 "
                                 f"among them (the score is P(1) - P(-1))")
    if meta.kind == "regressor" and meta.classes is not None:
        raise ModelRegistryError(f"field 'classes' is {list(meta.classes)} for a regressor: write null")
    if meta.onnx.outputs != _expected_outputs(meta.kind):
        raise ModelRegistryError(f"field 'onnx.outputs' is {list(meta.onnx.outputs)}, a {meta.kind} graph outputs "
                                 f"{list(_expected_outputs(meta.kind))}")
    moments = {"trained_at": meta.trained_at} if meta.trained_at else {}
    if meta.training:
        moments.update({"training.first_event_ts": meta.training.first_event_ts,
                        "training.last_event_ts": meta.training.last_event_ts})
    for field, moment in moments.items():
        if moment.tzinfo is None:
            raise ModelRegistryError(f"field {field!r} is {moment.isoformat()}, a time without a UTC offset: "
                                     f"pass an aware datetime (tzinfo=UTC)")
    if meta.threshold is not None and not math.isfinite(meta.threshold):
        raise ModelRegistryError(f"field 'threshold' must be a finite number or null, got {meta.threshold!r}")


# --- the legacy layout ---------------------------------------------------------------------------

def _upgrade_legacy(old: dict[str, Any], directory: Path | None) -> dict[str, Any]:
    """The ``meta.json`` layout written before ``ModelMeta`` (no ``format``), as a current-format dict.

    Legacy reader, kept so that model directories published before ``ModelMeta`` still load: it accepts
    what the old ``serving.scorer.load_model`` accepted, with its defaults, and nothing here is written any
    more. The old guesses live here and nowhere else:

    - no ``onnx_input_dtype``: ``float32`` (the old reader's default; models from ``training.train`` were
      float64 and said so);
    - no ``threshold`` (``training.train`` never wrote one): ``report.json``'s ``backtest.threshold`` in the
      same directory, else none;
    - no ``onnx.input_name``: ``input``; no ``onnx.outputs``: the ones of the kind; no ``onnx.opset``: unknown.

    Renamed: ``onnx.opset`` -> ``onnx.opsets``, ``training.weights`` -> ``training.weights_column``. Dropped
    (duplicates): ``feature_names`` (the order of ``features``), ``seed`` (``params.seed``), ``versioning``.
    """
    for key in ("name", "version", "kind", "feature_names", "features", "views"):
        if key not in old:
            raise ModelRegistryError(f"field {key!r} is missing (a meta.json without 'format', the legacy layout)")
    if not isinstance(old["features"], list) or not isinstance(old["feature_names"], list):
        raise ModelRegistryError("fields 'features' and 'feature_names' must be lists (the legacy layout)")
    rows = {row.get("name"): row for row in old["features"] if isinstance(row, dict)}
    absent = [name for name in old["feature_names"] if name not in rows]
    if absent:
        raise ModelRegistryError(f"field 'feature_names' lists {absent}, which 'features' does not describe")
    dtype = old.get("onnx_input_dtype", "float32")
    if dtype not in get_args(OnnxDtype):
        raise ModelRegistryError(f"field 'onnx_input_dtype' must be one of 'float64', 'float32', got {dtype!r}")
    onnx = old["onnx"] if isinstance(old.get("onnx"), dict) else {}
    training = old.get("training")
    threshold = old.get("threshold")
    report = None if directory is None else directory / "report.json"
    if threshold is None and report is not None and report.is_file():
        try:
            threshold = json.loads(report.read_text()).get("backtest", {}).get("threshold")
        except (ValueError, AttributeError):
            raise ModelRegistryError(f"no 'threshold' (the legacy layout), and {report} holds no "
                                     f"backtest.threshold to take it from") from None
    return {
        "name": old["name"], "version": old["version"], "kind": old["kind"], "trained_at": old.get("trained_at"),
        "features": [rows[name] for name in old["feature_names"]], "views": old["views"],
        "label": old.get("label"), "classes": old.get("classes"),
        "training": training if not isinstance(training, dict) else {
            **{k: v for k, v in training.items() if k != "weights"}, "weights_column": training.get("weights")},
        "params": old.get("params") or {}, "metrics": old.get("metrics") or {}, "backtest": old.get("backtest"),
        "validation": None,
        "onnx": {"opsets": onnx.get("opset", {}), "input_name": onnx.get("input_name", "input"),
                 "input_dtype": dtype,
                 "outputs": onnx.get("outputs", list(_expected_outputs(old["kind"]))),
                 "parity": onnx.get("parity"), "float32_parity": onnx.get("float32_parity")},
        "threshold": threshold,
        "libraries": old.get("libraries") or {},
        "reference": None,
    }
