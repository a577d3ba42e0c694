"""Monitoring a published model: the checks, their thresholds, and the report ``featurestore monitor`` writes.

Each check compares one figure with two thresholds and says ``OK``, ``WARN`` or ``ALERT`` (``SKIP`` when the
figure cannot be computed: too few rows, no reference, no matured label); the report's status is the worst.
The figures come from ``app.monitoring`` (the rows served in the window, the online store, the stored bars);
drift is ``training.reference``'s PSI and KS.

Checks and their default thresholds (``[monitor]`` in ``featurestore.toml`` overrides any of them):

==================  ===========================================================  ==========  ===========
check               figure                                                       WARN above  ALERT above
==================  ===========================================================  ==========  ===========
feature_drift       each input's PSI against the training set                    0.1         0.25
                    its KS statistic                                             0.1         0.2
                    its null rate minus the training set's                       0.05        0.2
prediction_drift    the scores' PSI and KS against the training set's scores     as above    as above
freshness           each view's newest online row per symbol: age in bars        2           5
live_performance    backtest IC minus live IC (matured labels)                   0.02        0.05
                    backtest hit rate minus live hit rate                        0.02        0.05
==================  ===========================================================  ==========  ===========

Drift needs ``min_rows`` (100) rows in the window; live performance ``min_labelled`` (200) signals whose
label has matured. Keys: ``psi_warn``, ``psi_alert``, ``ks_warn``, ``ks_alert``, ``null_rate_warn``,
``null_rate_alert``, ``freshness_warn``, ``freshness_alert``, ``ic_warn``, ``ic_alert``, ``hit_rate_warn``,
``hit_rate_alert``, ``min_rows``, ``min_labelled``.

>>> MonitorThresholds.from_table({"psi_alert": 0.5}, where="featurestore.toml").psi_alert
0.5
>>> MonitorThresholds.from_table({"psi_alret": 0.5}, where="featurestore.toml")
Traceback (most recent call last):
...
featurestore.errors.FeatureStoreError: featurestore.toml [monitor]: unknown threshold 'psi_alret'; did you mean 'psi_alert'?
>>> status_of(0.3, warn=0.1, alert=0.25), status_of(0.05, warn=0.1, alert=0.25), status_of(None, warn=0.1, alert=0.25)
('ALERT', 'OK', 'SKIP')
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import orjson

from featurestore.errors import FeatureStoreError
from training.codec import decode, encode
from training.reference import Drift, ModelReference, SignalFigures, drift

__all__ = ["STATUSES", "Check", "FeatureDrift", "Freshness", "MonitorReport", "MonitorThresholds", "drift_checks",
           "freshness_checks", "performance_checks", "read_served", "status_of", "worst"]

Status = Literal["OK", "WARN", "ALERT", "SKIP"]
STATUSES: tuple[Status, ...] = ("OK", "WARN", "ALERT", "SKIP")
_RANK = {"SKIP": 0, "OK": 1, "WARN": 2, "ALERT": 3}


@dataclass(frozen=True)
class MonitorThresholds:
    """WARN / ALERT thresholds of every check (the module docstring's table)."""

    psi_warn: float = 0.1
    psi_alert: float = 0.25
    ks_warn: float = 0.1
    ks_alert: float = 0.2
    null_rate_warn: float = 0.05
    null_rate_alert: float = 0.2
    freshness_warn: float = 2.0
    freshness_alert: float = 5.0
    ic_warn: float = 0.02
    ic_alert: float = 0.05
    hit_rate_warn: float = 0.02
    hit_rate_alert: float = 0.05
    min_rows: int = 100
    min_labelled: int = 200

    @classmethod
    def from_table(cls, table: Mapping[str, Any], *, where: str) -> MonitorThresholds:
        """The defaults with the ``[monitor]`` table's values; an unknown key, a non-number or a WARN above its
        ALERT is refused naming ``where``."""
        names = [f.name for f in dataclasses.fields(cls)]
        for key, value in table.items():
            if key not in names:
                close = difflib.get_close_matches(key, names, n=1)
                raise FeatureStoreError(f"{where} [monitor]: unknown threshold {key!r}"
                                        + (f"; did you mean {close[0]!r}?" if close else f" (known: {', '.join(names)})"))
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise FeatureStoreError(f"{where} [monitor]: {key} must be a number >= 0, got {value!r}")
        thresholds = cls(**{k: type(getattr(cls, k))(v) for k, v in table.items()})
        for name in names:
            if name.endswith("_warn") and getattr(thresholds, name) > getattr(thresholds, name[:-5] + "_alert"):
                raise FeatureStoreError(f"{where} [monitor]: {name} {getattr(thresholds, name)} is above "
                                        f"{name[:-5]}_alert {getattr(thresholds, name[:-5] + '_alert')}")
        return thresholds


def status_of(value: float | None, *, warn: float, alert: float) -> Status:
    """``ALERT`` above ``alert``, ``WARN`` above ``warn``, else ``OK``; ``SKIP`` without a value."""
    if value is None or not math.isfinite(value):
        return "SKIP"
    return "ALERT" if value > alert else "WARN" if value > warn else "OK"


def worst(statuses: Sequence[Status]) -> Status:
    """The most severe status (``SKIP`` only when every check was skipped)."""
    return max(statuses, key=_RANK.__getitem__, default="SKIP")


@dataclass(frozen=True)
class Check:
    """One figure against its thresholds."""

    check: str  # feature_drift, prediction_drift, freshness, live_performance
    subject: str  # the feature, "score", "<view> <symbol>", or the figure compared
    figure: str  # psi, ks, null_rate, age_bars, ic_drop, hit_rate_drop
    value: float | None
    warn: float
    alert: float
    status: Status
    detail: str = ""


@dataclass(frozen=True)
class FeatureDrift:
    """One model input's drift in the window."""

    feature: str
    drift: Drift


@dataclass(frozen=True)
class Freshness:
    """A view's newest online row of one symbol (``ts`` None: the online store has none)."""

    view: str
    symbol: str
    ts: datetime | None
    age_seconds: float | None
    age_bars: float | None


def _drift_checks(check: str, subject: str, found: Drift, limits: MonitorThresholds) -> list[Check]:
    enough = found.rows - round(found.null_rate * found.rows) >= limits.min_rows
    why = "" if enough else f"{found.rows} rows in the window, fewer than min_rows {limits.min_rows} with values"
    null_increase = found.null_rate - found.reference_null_rate if found.rows >= limits.min_rows else None
    return [
        Check(check, subject, "psi", found.psi if enough else None, limits.psi_warn, limits.psi_alert,
              status_of(found.psi if enough else None, warn=limits.psi_warn, alert=limits.psi_alert), why),
        Check(check, subject, "ks", found.ks if enough else None, limits.ks_warn, limits.ks_alert,
              status_of(found.ks if enough else None, warn=limits.ks_warn, alert=limits.ks_alert), why),
        Check(check, subject, "null_rate", null_increase, limits.null_rate_warn, limits.null_rate_alert,
              status_of(null_increase, warn=limits.null_rate_warn, alert=limits.null_rate_alert),
              f"null rate {found.null_rate:.3f}, training {found.reference_null_rate:.3f}"),
    ]


def drift_checks(reference: ModelReference, features: Mapping[str, np.ndarray], scores: np.ndarray,
                 limits: MonitorThresholds) -> tuple[list[FeatureDrift], Drift, list[Check]]:
    """Drift of each input's values in the window (NaN: null) and of the scores against the training set's."""
    drifts = [FeatureDrift(name, drift(reference.features[name], values)) for name, values in features.items()]
    predicted = drift(reference.prediction, scores)
    checks = [check for d in drifts for check in _drift_checks("feature_drift", d.feature, d.drift, limits)]
    checks += _drift_checks("prediction_drift", "score", predicted, limits)[:2]
    return drifts, predicted, checks


def freshness_checks(rows: Sequence[Freshness], limits: MonitorThresholds) -> list[Check]:
    """Each view and symbol's newest online row: its age in bars of the view's timeframe (none: ALERT)."""
    return [Check("freshness", f"{row.view} {row.symbol}", "age_bars", row.age_bars, limits.freshness_warn,
                  limits.freshness_alert,
                  "ALERT" if row.ts is None else status_of(row.age_bars, warn=limits.freshness_warn,
                                                           alert=limits.freshness_alert),
                  "no online row" if row.ts is None else f"newest row {row.ts.isoformat()}")
            for row in rows]


def performance_checks(live: SignalFigures | None, backtest: SignalFigures | None,
                       limits: MonitorThresholds) -> list[Check]:
    """How far the live IC and hit rate fall below the backtest's (a live figure above it is a drop below 0)."""
    labelled = 0 if live is None else live.rows
    why = ("no backtest figures in the model's reference (published before them)" if backtest is None else
           f"{labelled} signals with a matured label, fewer than min_labelled {limits.min_labelled}"
           if labelled < limits.min_labelled else "")

    def drop(figure: str) -> float | None:
        if why:
            return None
        was, now = getattr(backtest, figure), getattr(live, figure)
        return None if was is None or now is None else was - now

    checks = []
    for figure, warn, alert in (("ic", limits.ic_warn, limits.ic_alert),
                                ("hit_rate", limits.hit_rate_warn, limits.hit_rate_alert)):
        value = drop(figure)
        detail = why or (f"{figure} not computable" if value is None else
                         f"live {getattr(live, figure):.4f}, backtest {getattr(backtest, figure):.4f}")
        checks.append(Check("live_performance", figure, f"{figure}_drop", value, warn, alert,
                            status_of(value, warn=warn, alert=alert), detail))
    return checks


@dataclass(frozen=True)
class MonitorReport:
    """``featurestore monitor``'s result, written as JSON to ``<store>/monitor/model-<name>.json``."""

    model: str
    version: str
    generated_at: datetime
    window_start: datetime
    window_end: datetime
    source: str  # "signals" (the audit log: rows served to the model) or "offline" (the window's rows, scored)
    rows: int
    status: Status
    thresholds: MonitorThresholds
    checks: tuple[Check, ...]
    features: tuple[FeatureDrift, ...]
    prediction: Drift | None
    freshness: tuple[Freshness, ...]
    signals: dict[str, int]  # side -> signals of the model version in the window
    live: SignalFigures | None
    backtest: SignalFigures | None

    def to_json(self) -> str:
        return json.dumps(encode(self), indent=1, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> MonitorReport:
        return decode(cls, json.loads(text), "", error=FeatureStoreError, schema="a monitor report")

    def table(self) -> str:
        """The checks as a plain-text table, the ones not OK first."""
        rows = sorted(self.checks, key=lambda c: -_RANK[c.status])
        lines = [f"model {self.model} {self.version}: {self.status}; window {self.window_start.isoformat()} .. "
                 f"{self.window_end.isoformat()}, {self.rows:,} rows from {self.source}, signals "
                 + (", ".join(f"{side} {n:,}" for side, n in self.signals.items()) or "none"),
                 f"{'status':<6}  {'check':<17} {'subject':<34} {'figure':<14} {'value':>9} {'warn':>7} {'alert':>7}  detail"]
        for c in rows:
            value = "-" if c.value is None else f"{c.value:.4f}"
            lines.append(f"{c.status:<6}  {c.check:<17} {c.subject:<34} {c.figure:<14} {value:>9} {c.warn:>7g} "
                         f"{c.alert:>7g}  {c.detail}")
        return "\n".join(lines)


def read_served(path: Path, *, model: str, version: str, start: datetime, end: datetime) -> list[dict[str, Any]]:
    """The model version's signals in the audit log at ``path`` with ``start < ts <= end`` (each line once;
    signatures are not checked here: ``featurestore verify-signal`` does)."""
    if not Path(path).is_file():
        return []
    needle, found = f'"model":{json.dumps(model)}'.encode(), []
    low, high = start.isoformat(), end.isoformat()
    with open(path, "rb") as lines:
        for line in lines:
            if needle not in line:
                continue
            try:
                signal = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if signal.get("model_version") == version and low < signal.get("ts", "") <= high:
                found.append(signal)
    return found
