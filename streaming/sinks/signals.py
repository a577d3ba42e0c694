"""Sink: score every emitted feature row with a published model and append a signed signal to the audit log.

A closed bar becomes a signal in the same dataflow, with no extra hop: the rows the feature step has
just computed are scored as they are (not re-read from the online store), each as of its own time. The
model's other views are, live, the newest online rows (e.g. ``daily_trend`` kept fresh by ``featurestore
materialize``); in a replay, each view's row as of the replayed moment from the offline store, with the
training join's TTL rule (``serving.history``): the online store holds rows from after the replayed times.
The skew guard refuses what the ``score`` command would refuse. One partition, so one worker of the
cluster writes the audit log.

Exactly once under recovery: the audit log is the state. A row at or before its symbol's last signal
from the same model version is skipped, so the rows Bytewax replays after a restart add nothing. The
audit log's signed head is rewritten at every snapshot and when the flow ends.

A replay of stored bars is ``mode="replay"``: its signals are marked so and go to the replay log by
default (``streaming.flow``), never the live one.

A view, a model trained on it (a tiny LightGBM model; ``featurestore train`` publishes the same files),
two streamed rows, two signals:

>>> import json, os, tempfile
>>> from datetime import datetime, timezone
>>> import lightgbm as lgb, numpy as np, polars as pl
>>> from featurestore.definitions import FeatureView
>>> from streaming.items import Counts, FeatureRows
>>> from training.artifact import FeatureColumn, ModelMeta, OnnxInfo, ViewInfo, write_model
>>> from training.onnx_export import export_onnx
>>> toy = FeatureView("toy", "1h", {"a": pl.col("close").pct_change(), "b": pl.col("volume").log()})
>>> X = np.random.default_rng(0).normal(size=(500, 2)); X[::7, 1] = np.nan  # b: missing in training
>>> booster = lgb.train({"objective": "regression", "verbosity": -1, "num_threads": 1, "min_data_in_leaf": 5},
...                     lgb.Dataset(X, np.where(X[:, 0] > 0, 0.5, -0.5), feature_name=["toy__a", "toy__b"]), 20)
>>> exported = export_onnx(booster, X, kind="regressor")
>>> meta = ModelMeta(name="toy", version="t0", kind="regressor", views=(ViewInfo("toy", toy.version, "1h"),),
...                  features=tuple(FeatureColumn(f"toy__{f}", "toy", f, toy.version, "1h", 3600.0) for f in "ab"),
...                  onnx=OnnxInfo.from_export(exported), threshold=0.1)
>>> work = Path(tempfile.mkdtemp())
>>> _ = write_model(work / "model", meta, onnx_model=exported.model, model_text=booster.model_to_string())
>>> os.environ["FEATURESTORE_SIGNING_KEY"] = "demo key"
>>> part = SignalSink(work, toy, ["a", "b"], work / "model", work / "signals.jsonl", mode="live").build_part(
...     "signals", "signals", None)
>>> t = int(datetime(2024, 5, 1, 12, tzinfo=timezone.utc).timestamp() * 1000)
>>> part.write_batch([FeatureRows("BTC/USDT", [t, t + 3_600_000], [(0.5, 1.0), (-0.5, None)], Counts())])
>>> part.close()
signals: model toy t0: 2 signed, 0 refused -> ...signals.jsonl
>>> [(s["side"], s["mode"]) for s in map(json.loads, (work / "signals.jsonl").read_text().splitlines())]
[('LONG', 'live'), ('SHORT', 'live')]
>>> del os.environ["FEATURESTORE_SIGNING_KEY"]
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

from featurestore.definitions import FeatureView
from featurestore.errors import FeatureStoreError, VersionSkewError
from featurestore.online import OnlineRow, connect
from featurestore.store import Store
from serving.audit import AuditLog
from serving.history import OfflineRows
from serving.scorer import Scorer, load_model
from serving.signal_service import Mode, SignalService
from serving.signals import Thresholds, signing_key
from streaming.clock import to_datetime
from streaming.items import FeatureRows

__all__ = ["SignalSink"]


class SignalSink(FixedPartitionedSink[FeatureRows, None]):
    """Signals for ``view``'s rows from the model in ``model_dir``, appended to ``audit``.

    ``thresholds`` default to the model's backtest threshold; ``max_age`` as for ``Scorer``; ``mode``: ``live``
    or ``replay`` (``SignalService``; a replay of the rows between ``start`` and ``end`` reads the other views
    from the offline store). Refuses, when built, a model that does not use ``view`` or was trained on another
    version of it, and a missing signing key.
    """

    def __init__(self, store_root: str | Path, view: FeatureView, feature_names: list[str], model_dir: str | Path,
                 audit: str | Path, *, mode: Mode, thresholds: Thresholds | None = None, size: float = 1.0,
                 max_age: dict[str, timedelta] | None = None, start: datetime | None = None,
                 end: datetime | None = None) -> None:
        self.store_root, self.view, self.feature_names = Path(store_root), view, feature_names
        self.model_dir, self.audit, self.mode, self.start, self.end = Path(model_dir), Path(audit), mode, start, end
        self.thresholds, self.size, self.max_age = thresholds, size, max_age
        model = load_model(self.model_dir)
        trained = model.view_versions.get(view.name)
        if trained is None:
            raise FeatureStoreError(f"model {model.name} {model.version} uses views {list(model.view_versions)}, "
                                    f"not {view.name!r}: stream one of those to score it")
        if trained != view.version:
            raise VersionSkewError(f"model {model.name} {model.version} was trained on view {view.name!r} version "
                                   f"{trained}, the definitions are version {view.version}: retrain, or stream the "
                                   f"definitions it was trained on")
        signing_key()  # refuse now, not in a worker

    def list_parts(self) -> list[str]:
        return ["signals"]

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _SignalPartition:
        url = Store(self.store_root).online_url
        connect(url).close()  # create it: the online sink may not have written yet
        scorer = Scorer(load_model(self.model_dir), connect(url, readonly=True), max_age=self.max_age)
        try:
            service = SignalService(scorer, audit=AuditLog(self.audit, key=signing_key()), thresholds=self.thresholds,
                                    size=self.size, mode=self.mode)
        except BaseException:
            scorer.close()
            raise
        return _SignalPartition(self, service, self._history(scorer) if self.mode == "replay" else None)

    def _history(self, scorer: Scorer) -> OfflineRows | None:
        """The model's other views as of each replayed moment, from the offline store (None: it has none)."""
        model = scorer.model
        others = {v: version for v, version in model.view_versions.items() if v != self.view.name}
        if not others:
            return None
        features = {v: [f for view, f in model.columns if view == v] for v in others}
        return OfflineRows(Store(self.store_root), others, features, max_age=scorer.max_age, start=self.start,
                           end=self.end)


class _SignalPartition(StatefulSinkPartition[FeatureRows, None]):
    def __init__(self, sink: SignalSink, service: SignalService, history: OfflineRows | None) -> None:
        self._sink, self._service, self._history = sink, service, history
        self._signed = self._refused = 0
        self._first_refusal: str | None = None

    def write_batch(self, values: list[FeatureRows]) -> None:
        sink = self._sink
        view, version, names = sink.view.name, sink.view.version, sink.feature_names
        rows = [OnlineRow(view, item.symbol, moment, version, dict(zip(names, row, strict=True)), moment)
                for item in values for moment, row in zip(map(to_datetime, item.ts), item.values, strict=True)]
        signed, refused = self._service.signal_rows(rows, history=self._history)
        self._signed += len(signed)
        self._refused += len(refused)
        self._first_refusal = self._first_refusal or next(iter(refused), None)

    def snapshot(self) -> None:
        self._service.audit.sync()  # the signed head covers what is appended so far
        return None

    def close(self) -> None:
        model = self._service.scorer.model
        detail = f" (first: {self._first_refusal})" if self._refused else ""
        print(f"signals: model {model.name} {model.version}: {self._signed:,} signed, {self._refused:,} refused{detail} "
              f"-> {self._sink.audit}", flush=True)
        self._service.close()
