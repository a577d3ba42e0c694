"""``FeatureStore.monitor``'s composition: the rows a model was served in a window, its online rows and its
matured labels, checked against the model's reference (``serving.monitoring`` holds the checks).

Sources of the window's rows (``source``):

- ``signals``: the model version's signals in the audit log, ``end - window < ts <= end``: the exact inputs
  it was fed and the scores it gave (what ``score``, ``serve`` and ``stream --model`` served). Of the logs
  given (by default the live log, then the replay log), the first that holds any;
- ``offline``: the point-in-time rows of the window from the offline store (every row of the model's first
  view, its other views joined as of it, the model's TTLs), scored in batch by the model: what it would
  have been served;
- ``auto`` (default): ``signals`` when the window holds any, else ``offline``.

Live performance takes the signals of the window whose label has matured (the bars it needs are stored):
the model's label (IC, hit rate) and the next bar's return held on the signal's side, at the backtest's
costs (``training.evaluation.signal_figures``), beside the backtest's figures recorded at training.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import polars as pl

from featurestore.atomic import write_bytes_atomic
from featurestore.errors import FeatureStoreError
from featurestore.online import connect
from featurestore.timeframes import timeframe_ms
from serving.monitoring import (
    Check,
    Freshness,
    MonitorReport,
    MonitorThresholds,
    drift_checks,
    freshness_checks,
    performance_checks,
    read_served,
    worst,
)
from training.artifact import ModelMeta
from training.evaluation import signal_figures
from training.labels import parse_label
from training.reference import SignalFigures

if TYPE_CHECKING:
    from app.sdk import FeatureStore

__all__ = ["MonitorSource", "monitor_model"]

MonitorSource = Literal["auto", "signals", "offline"]
_POSITION = {"LONG": 1, "SHORT": -1, "FLAT": 0}
_HISTORY_BARS = 500  # stored bars before the window a label may need (an ATR's warm-up)


def _value(value: object) -> float:
    """A signal's feature value as fed to the model: null is NaN, "inf"/"-inf" the infinities."""
    return float("nan") if value is None else float(value)


def _offline_rows(fs: FeatureStore, meta: ModelMeta, model_dir: Path, start: datetime, end: datetime,
                  symbols: list[str] | None) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The window's point-in-time rows from the offline store and the model's scores of them."""
    import lightgbm as lgb

    from training.model import predict, signal

    frame = fs.get_historical_features(features=[f"{view}:{feature}" for view, feature in meta.columns],
                                       all_bars=True, symbols=symbols, start=start,
                                       end=end + timedelta(milliseconds=1), ttl=meta.ttl)  # (start, end]
    frame = frame.filter(pl.col("event_ts") > start)
    X = frame.select(meta.feature_names).cast(pl.Float64).fill_null(np.nan).to_numpy()
    booster = lgb.Booster(model_file=str(model_dir / "model.txt"))
    scores = signal(predict(booster, X, meta.kind), meta.kind) if len(X) else np.zeros(0)
    return {name: X[:, j] for j, name in enumerate(meta.feature_names)}, scores


def _freshness(fs: FeatureStore, meta: ModelMeta, symbols: list[str], end: datetime) -> list[Freshness]:
    try:
        online = connect(fs.store.online_url, readonly=True)
    except FeatureStoreError:
        online = None
    rows = []
    for view in meta.views:
        found = {} if online is None else online.get_many(view.name, symbols)
        bar = timedelta(milliseconds=timeframe_ms(view.timeframe))
        for symbol in symbols:
            row = found.get(symbol)
            age = None if row is None else end - row.ts
            rows.append(Freshness(view.name, symbol, None if row is None else row.ts,
                                  None if age is None else age.total_seconds(), None if age is None else age / bar))
    if online is not None:
        online.close()
    return rows


def _live(fs: FeatureStore, meta: ModelMeta, served: list[dict], start: datetime, end: datetime,
          cost_bps: float) -> SignalFigures | None:
    """The served signals against their matured labels (None: no signal, or a model without a label)."""
    if not served or meta.label is None:
        return None
    label, bar_return = parse_label(meta.label.spec), parse_label("future_ret:h=1")
    timeframe = meta.label.bars_timeframe
    exchange = fs.store.resolve_exchange(timeframe, fs.config.exchange)
    bar = timedelta(milliseconds=timeframe_ms(timeframe))
    signals = pl.DataFrame({"symbol": [s["symbol"] for s in served], "ts": [s["ts"] for s in served],
                            "score": [_value(s["score"]) for s in served],
                            "position": [_POSITION[s["side"]] for s in served]}).with_columns(
        pl.col("ts").str.to_datetime(time_unit="ms", time_zone="UTC"))
    stored = {s.symbol for s in fs.store.series(exchange=exchange, timeframe=timeframe)}
    labelled = []
    for (symbol,), rows in signals.group_by("symbol"):
        if symbol not in stored:
            continue
        bars = fs.store.scan_bars(exchange, timeframe, [symbol]).filter(
            pl.col("ts").is_between(start - _HISTORY_BARS * bar, end + (label.h + 1) * bar)).collect()
        labels = label.compute(bars, timeframe).select("ts", pl.col(label.return_column).alias("label_ret")).join(
            bar_return.compute(bars, timeframe).select("ts", pl.col(bar_return.name).alias("bar_ret")), on="ts")
        labelled.append(rows.join(labels.with_columns(pl.col("ts").cast(rows["ts"].dtype)), on="ts", how="inner"))
    if not labelled:
        return None
    frame = pl.concat(labelled).filter(pl.col("label_ret").is_not_null())
    return signal_figures(frame, cost_bps=cost_bps)


def monitor_model(fs: FeatureStore, model_dir: Path, *, window: timedelta, end: datetime, source: MonitorSource,
                  symbols: list[str] | None, audit: Sequence[Path], thresholds: dict | None = None) -> MonitorReport:
    """Check the model in ``model_dir`` over ``end - window < ts <= end``; write and return the report."""
    if window <= timedelta(0):
        raise FeatureStoreError(f"the window must be positive, got {window}")
    meta = ModelMeta.read(model_dir)
    reference = meta.read_reference(model_dir)
    limits = MonitorThresholds.from_table({**fs.config.monitor, **(thresholds or {})}, where=str(fs.store.config_path))
    start = end - window
    served: list[dict] = []
    for log in audit:  # the first log that holds the model's signals in the window
        served = read_served(log, model=meta.name, version=meta.version, start=start, end=end)
        if served:
            break
    if symbols is not None:
        served = [s for s in served if s["symbol"] in symbols]
    if source == "signals" or (source == "auto" and served):
        source = "signals"
        values = {name: np.array([_value(s["features"].get(name)) for s in served]) for name in meta.feature_names}
        scores = np.array([_value(s["score"]) for s in served])
    elif source in ("auto", "offline"):
        source = "offline"
        values, scores = _offline_rows(fs, meta, model_dir, start, end, symbols)
    else:
        raise FeatureStoreError(f"unknown monitor source {source!r}: use auto, signals or offline")
    checks: list[Check]
    if reference is None:
        features, prediction = (), None
        checks = [Check("feature_drift", "every input", "psi", None, limits.psi_warn, limits.psi_alert, "SKIP",
                        "the model has no reference distributions (published before them): retrain it")]
    else:
        features, prediction, checks = drift_checks(reference, values, scores, limits)
    chosen = symbols or sorted({s["symbol"] for s in served}) or list(meta.training.symbols if meta.training else [])
    freshness = _freshness(fs, meta, chosen, end)
    backtest = reference.backtest if reference is not None else None
    live = _live(fs, meta, served, start, end, backtest.cost_bps if backtest else 5.0)
    checks += freshness_checks(freshness, limits) + performance_checks(live, backtest, limits)
    sides = {side: sum(s["side"] == side for s in served) for side in ("LONG", "SHORT", "FLAT")}
    report = MonitorReport(meta.name, meta.version, fs.clock(), start, end, source, len(scores),
                           worst([c.status for c in checks]), limits, tuple(checks), tuple(features), prediction,
                           tuple(freshness), sides, live, backtest)
    write_bytes_atomic(report.to_json().encode(), fs.store.monitor_report_path(meta.name))
    return report
