"""Signals from scores: a side by thresholds, the position transition, a signed record in the audit log.

No order is ever sent: a signal says what a position would become. The current side of each symbol is
the side of the model's last signal in the audit log (FLAT when there is none), so a restarted service
continues where it stopped; one service writes one audit log (``serving.audit``: hash-chained, verified
when opened).

A service is ``live`` (scoring now) or ``replay`` (scoring past moments: a replayed stream, ``score
--as-of``); every signal says which in ``mode``, and replays go to their own log by default, so a replay
never becomes the position a live service continues from.

One decision per feature row: asking again about a row already decided (same model version, row time,
score, thresholds and size) returns the logged signal itself and appends nothing, so a client's retry
never shows up as a HOLD, and re-running a job over the same rows leaves the log as it was.

Thresholds default to the |score| threshold the model's backtest used (``ModelMeta.threshold``), symmetric
around 0: LONG above it, SHORT below minus it; 0 when none was recorded. A classifier's score is 0 when the
neutral class is the likeliest (``training.model.classifier_signal``), so its thresholds must bracket 0:
a neutral prediction is FLAT, as in the backtest.

Signal fields (``signature`` is the HMAC-SHA256 of the canonical JSON of all the others):
``ts`` (the feature row's time, ISO-8601 UTC: when the decision is taken), ``symbol``, ``side``, ``score``,
``previous_side``, ``action`` / ``quantity`` / ``position_after`` (the transition in units of ``size``),
``size``, ``model``, ``model_version``, ``views`` ({view: {version, ts}} of the rows used), ``features``
(input name -> value used; null when missing and fed as NaN), ``missing`` (those names), ``thresholds``,
``mode`` (``live`` or ``replay``), and from the audit log ``seq`` and ``prev`` (the chain).

A model directory (a tiny LightGBM model, threshold 0.1), a row, a signal:

>>> import tempfile
>>> from datetime import datetime, timezone
>>> from pathlib import Path
>>> import lightgbm as lgb, numpy as np
>>> from featurestore.online import OnlineRow
>>> from featurestore.online.sqlite import SqliteOnlineStore
>>> from serving.signals import verify_signal
>>> from serving.scorer import Scorer, load_model
>>> from training.artifact import FeatureColumn, ModelMeta, OnnxInfo, ViewInfo, write_model
>>> from training.onnx_export import export_onnx
>>> X = np.random.default_rng(0).normal(size=(500, 2))
>>> booster = lgb.train({"objective": "regression", "verbosity": -1, "num_threads": 1, "min_data_in_leaf": 5},
...                     lgb.Dataset(X, np.where(X[:, 0] > 0, 0.5, -0.5), feature_name=["toy__a", "toy__b"]), 20)
>>> exported = export_onnx(booster, X, kind="regressor")
>>> meta = ModelMeta(name="toy", version="t0", kind="regressor", views=(ViewInfo("toy", "v1", "1h"),),
...                  features=tuple(FeatureColumn(f"toy__{f}", "toy", f, "v1", "1h", 3600.0) for f in "ab"),
...                  onnx=OnnxInfo.from_export(exported), threshold=0.1)
>>> work = Path(tempfile.mkdtemp())
>>> _ = write_model(work / "model", meta, onnx_model=exported.model, model_text=booster.model_to_string())
>>> t = datetime(2024, 5, 1, 12, tzinfo=timezone.utc)
>>> with SqliteOnlineStore(work / "online.sqlite") as online:
...     _ = online.put_many([OnlineRow("toy", "BTC/USDT", t, "v1", {"a": 0.5, "b": 1.0}, t)])
>>> scorer = Scorer(load_model(work / "model"), SqliteOnlineStore(work / "online.sqlite", readonly=True))
>>> with SignalService(scorer, audit=AuditLog(work / "signals.jsonl", key=b"demo key")) as service:
...     (signal,) = service.signals(["BTC/USDT"], now=t)
>>> signal["ts"], signal["side"], signal["action"], signal["quantity"], signal["views"]
('2024-05-01T12:00:00+00:00', 'LONG', 'BUY', 1.0, {'toy': {'version': 'v1', 'ts': '2024-05-01T12:00:00+00:00'}})
>>> signal["mode"], signal["seq"], signal["prev"]
('live', 1, None)
>>> verify_signal(signal, key=b"demo key"), verify_signal(signal, key=b"another key")
(True, False)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import orjson

from featurestore.errors import (
    FeatureStoreError,
    FutureFeaturesError,
    MissingFeaturesError,
    NonFiniteFeaturesError,
    StaleFeaturesError,
    VersionSkewError,
)
from featurestore.online import OnlineRow
from serving.audit import AuditLog
from serving.history import OfflineRows
from serving.scorer import Model, Score, Scorer
from serving.signals import Side, Thresholds, json_number, side_for, transition

__all__ = ["Mode", "SignalService", "default_thresholds"]

#: ``live``: decisions about now; ``replay``: decisions about past moments (kept apart, in their own log).
Mode = Literal["live", "replay"]


def default_thresholds(model: Model) -> Thresholds:
    """``Thresholds(t, -t)`` for the model's recorded backtest threshold ``t`` (0 when none)."""
    t = model.threshold or 0.0
    return Thresholds(long_above=abs(t), short_below=-abs(t))


def _decision(signal: dict[str, Any]) -> tuple:
    """What makes two signals the same decision (the same row, model version and settings)."""
    thresholds = signal["thresholds"]
    return (signal["model_version"], signal["ts"], signal["score"], thresholds["long_above"],
            thresholds["short_below"], signal.get("size"))


@dataclass(frozen=True, slots=True)
class _Decided:
    """A symbol's last signal, kept as bytes: a long-running service holds no objects for the collector."""

    decision: tuple
    side: Side
    signal: bytes  # orjson of the signed signal

    @classmethod
    def of(cls, signal: dict[str, Any]) -> _Decided:
        return cls(_decision(signal), signal["side"], orjson.dumps(signal))


class SignalService:
    """Scores symbols, turns each score into a signal and appends it to ``audit``, which signs it.

    The service owns ``scorer`` and ``audit``: ``close()`` closes both, and so does a refusal to start.
    """

    def __init__(self, scorer: Scorer, *, audit: AuditLog, thresholds: Thresholds | None = None, size: float = 1.0,
                 mode: Mode = "live") -> None:
        self.scorer, self.audit, self.size, self.mode = scorer, audit, size, mode
        self.thresholds = thresholds or default_thresholds(scorer.model)
        try:
            self._check()
        except BaseException:
            self.close()
            raise
        self._last = {symbol: _Decided.of(signal) for symbol, signal in audit.last(scorer.model.name).items()}

    def _check(self) -> None:
        if not (self.size > 0 and math.isfinite(self.size)):
            raise FeatureStoreError(f"position size must be a positive number, got {self.size}")
        if self.mode not in ("live", "replay"):
            raise FeatureStoreError(f"signal mode must be 'live' or 'replay', got {self.mode!r}")
        low, high = self.thresholds.short_below, self.thresholds.long_above
        if self.scorer.model.kind == "classifier" and not low <= 0 <= high:
            raise FeatureStoreError(f"a classifier's thresholds must bracket 0 (short_below <= 0 <= long_above): its "
                                    f"score is 0 when the neutral class is the likeliest, which must be FLAT; got "
                                    f"long above {high}, short below {low}")

    def __enter__(self) -> SignalService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.scorer.close()
        self.audit.close()

    def _signal(self, score: Score, previous: Side) -> dict[str, Any]:
        """The signal of ``score`` (unsigned: the audit log chains and signs it)."""
        side = side_for(score.score, self.thresholds)
        move = transition(previous, side, size=self.size)
        model = self.scorer.model
        return {
            "ts": score.ts.isoformat(), "symbol": score.symbol, "side": side, "score": json_number(score.score),
            "previous_side": previous, "action": move.action, "quantity": move.quantity,
            "position_after": move.position_after, "size": self.size, "model": model.name,
            "model_version": model.version,
            "views": {view: {"version": row.view_version, "ts": row.ts.isoformat()} for view, row in score.rows.items()},
            "features": {name: value if math.isfinite(value) else json_number(value)
                         for name, value in zip(score.names, score.inputs, strict=True)},
            "missing": list(score.missing),
            "thresholds": {"long_above": self.thresholds.long_above, "short_below": self.thresholds.short_below},
            "mode": self.mode,
        }

    def _log(self, new: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Append ``new`` (in order) to the audit log; remember each symbol's last one; return them signed."""
        signed = self.audit.append(new)
        self._last.update((signal["symbol"], _Decided.of(signal)) for signal in signed)
        return signed

    def signals(self, symbols: Sequence[str], *, now: datetime) -> list[dict[str, Any]]:
        """Score ``symbols`` as of ``now``; a signed signal for each, the new ones appended to the audit log."""
        signals: list[dict[str, Any] | int] = []  # a logged signal, or the index of a new one
        new: list[dict[str, Any]] = []
        batch: dict[str, tuple[_Decided, int]] = {}  # a symbol asked twice: this batch's decision and its index
        settings = (self.scorer.model.version, self.thresholds.long_above, self.thresholds.short_below, self.size)
        for score in self.scorer.score(symbols, now=now):
            last, index = batch.get(score.symbol) or (self._last.get(score.symbol), None)
            decision = (settings[0], score.ts.isoformat(), json_number(score.score), *settings[1:])
            if last is not None and last.decision == decision:
                signals.append(orjson.loads(last.signal) if index is None else index)
                continue
            signal = self._signal(score, last.side if last else "FLAT")
            batch[score.symbol] = (_Decided(decision, signal["side"], b""), len(new))
            signals.append(len(new))
            new.append(signal)
        signed = self._log(new) if new else []
        return [signed[s] if isinstance(s, int) else s for s in signals]

    def signal_rows(self, rows: Sequence[OnlineRow], *, history: OfflineRows | None = None
                    ) -> tuple[list[dict[str, Any]], list[str]]:
        """Decide fresh feature rows (a dataflow's output, in time order per symbol): each is scored as of its
        own time and becomes a signed signal. The model's other views are read from ``history`` as of that
        time (a replay: the offline store, with the training join's rule) or, without it, are the newest
        online rows (live).

        A row at or before its symbol's last signal from this model version was decided already (a replay
        after a restart re-emits rows): skipped. A row the skew guard refuses is skipped with the reason.
        Returns the new signals (appended to the audit log) and the refusals.
        """
        decided: dict[str, _Decided] = {}  # this batch's, before the audit log signs them
        new, refused = [], []
        version = self.scorer.model.version
        for row in rows:
            last = decided.get(row.symbol) or self._last.get(row.symbol)
            if last is not None and last.decision[0] == version and datetime.fromisoformat(last.decision[1]) >= row.ts:
                continue
            given = {row.view: {row.symbol: row}}
            if history is not None:
                found = history.rows(row.symbol, row.ts)
                absent = [view for view in history.versions if view not in found]
                if absent:
                    refused.append("refusing to score: " + "; ".join(
                        f"no offline row of view {view!r} for {row.symbol} at most {history.max_age[view]} before "
                        f"{row.ts.isoformat()} (the training join had none either)" for view in absent))
                    continue
                given.update((view, {row.symbol: found[view]}) for view in found)
            try:
                (score,) = self.scorer.score([row.symbol], now=row.ts, given=given)
            except (MissingFeaturesError, VersionSkewError, StaleFeaturesError, FutureFeaturesError,
                    NonFiniteFeaturesError) as exc:
                refused.append(str(exc))
                continue
            signal = self._signal(score, last.side if last else "FLAT")
            decided[row.symbol] = _Decided(_decision(signal), signal["side"], b"")
            new.append(signal)
        return (self._log(new) if new else []), refused
