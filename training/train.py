"""End to end: point-in-time training set -> walk-forward evaluation -> final model -> ONNX gate -> registry.

1. Export every feature row of the first view (``--all-bars``) with the other views joined as of it, the
   label, and ``future_ret:h=1`` (the bar return the backtest trades).
2. Cross-validation (``cv``, ``training.splits.cv_folds``): walk-forward (expanding, the default: the first
   half of the periods trains the first fold, ``folds`` test blocks follow) or purged k-fold (``folds``
   blocks of every period, each the test once). Training rows whose label window (up to the label's end
   column) reaches into a test block are purged, and those within ``embargo`` (bars of the label's
   timeframe, or a timedelta) after it, or, walk-forward, before it. Out-of-sample predictions give the
   metrics and the backtest beside buy-and-hold; ``meta.json`` (``validation``) and ``report.json`` record
   the scheme and the embargo. Unless a ``threshold`` is given, the trading
   threshold is chosen on those out-of-sample folds (``training.evaluation.choose_threshold``), cost-aware:
   never below a floor (a regressor: the round-trip cost, ``2 * cost_bps``, in return units: a predicted
   move smaller than entering and leaving costs is noise to trade; a classifier: 0, a neutral prediction
   already takes no side), and the threshold that trades nothing when nothing beats the costs. The
   backtest reported is the chosen threshold's on the same folds (one parameter among seven candidates,
   said in ``report.json``). When its costs are larger than its gross return, ``TrainResult.warnings`` says so.
3. The published model is trained on every row (early stopping on the latest 20% of periods).
4. ONNX conversion, checked on every out-of-sample row (``training.onnx_export``); a refusal publishes
   nothing.
5. ``<models>/<name>/<version>/`` with the artifacts (``meta.json`` and ``features.json`` from one
   ``training.artifact.ModelMeta``; ``reference.json``, the training set's distributions of every input and
   of the published model's scores, and the out-of-sample signal figures, ``training.reference``); ``version = model_version(data fingerprint, settings)``, so the same
   data and settings give the same version and the same bytes.

A regressor learns the label's log return (``future_ret``, or the return of a ``bucket`` /
``triple_barrier`` label); a classifier learns the class of a ``bucket`` or ``triple_barrier`` label.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from tqdm import tqdm

from featurestore.definitions import FeatureView
from featurestore.errors import TrainingDataError
from featurestore.export import ExportOptions, training_set
from featurestore.pit_join import feature_column
from featurestore.store import Store
from featurestore.timeframes import timeframe_ms
from training.artifact import (
    BacktestSummary,
    FeatureColumn,
    LabelInfo,
    ModelMeta,
    OnnxInfo,
    ReferenceFile,
    TrainingInfo,
    Validation,
    ViewInfo,
    write_model,
)
from training.evaluation import (
    Backtest,
    backtest,
    choose_threshold,
    classification_metrics,
    positions_for,
    regression_metrics,
    signal_figures,
    write_report,
)
from training.labels import LabelSpec, parse_label
from training.model import CLASSES, ModelKind, ModelParams, fit_model, predict, signal
from training.onnx_export import OnnxDtype, export_onnx
from training.reference import REFERENCE_FILE, Distribution, ModelReference
from training.registry import model_version, publish
from training.splits import CV_SCHEMES, CvScheme, cv_folds

__all__ = ["TrainResult", "frame_fingerprint", "library_versions", "summary_table", "train_model"]

_BAR_RETURN = parse_label("future_ret:h=1")


def frame_fingerprint(frame: pl.DataFrame) -> str:
    """sha256 of a frame's column names, dtypes, null masks and values (stable across runs and machines).

    >>> a = pl.DataFrame({"x": [1.0, None], "s": ["a", "b"]})
    >>> frame_fingerprint(a) == frame_fingerprint(a.clone()), frame_fingerprint(a) == frame_fingerprint(a[::-1])
    (True, False)
    """
    digest = hashlib.sha256()
    for name in frame.columns:
        series = frame[name]
        digest.update(f"{name}\x1f{series.dtype}\x1f".encode())
        digest.update(series.is_null().to_numpy().tobytes())
        if series.dtype == pl.String:
            digest.update("\x1f".join(series.fill_null("").to_list()).encode())
        else:
            digest.update(np.ascontiguousarray(series.to_physical().fill_null(0).to_numpy()).tobytes())
    return digest.hexdigest()


def library_versions() -> dict[str, str]:
    import lightgbm
    import onnx
    import onnxmltools
    import onnxruntime

    return {"python": platform.python_version(), "lightgbm": lightgbm.__version__, "onnx": onnx.__version__,
            "onnxmltools": onnxmltools.__version__, "onnxruntime": onnxruntime.__version__,
            "polars": pl.__version__, "numpy": np.__version__}


@dataclass(frozen=True)
class TrainResult:
    """What ``train_model`` published (``created`` is False when that version was stored already)."""

    name: str
    version: str
    path: Path
    meta: ModelMeta
    report: dict[str, Any]
    created: bool
    warnings: tuple[str, ...] = ()  # what the caller should show the user (costs dominating the backtest)


def _target(label: LabelSpec, kind: ModelKind) -> str:
    if kind == "classifier":
        if not label.is_class:
            raise TrainingDataError(f"a classifier needs a class label (bucket:... or triple_barrier:...), got "
                                    f"{label.spec!r}; use --kind regressor for future_ret")
        return label.name
    return label.return_column


def train_model(store: Store, *, views: Sequence[FeatureView], label: LabelSpec, name: str, models_root: Path,
                now: datetime, kind: ModelKind = "regressor", symbols: Sequence[str] | None = None,
                start: datetime | None = None, end: datetime | None = None, params: ModelParams | None = None,
                folds: int = 4, onnx_dtype: OnnxDtype = "float64", cost_bps: float = 5.0, threshold: float | None = None,
                ttl: dict | None = None, exchange: str | None = None,
                features: Mapping[str, Sequence[str]] | None = None, progress: bool = False,
                cv: CvScheme = "walk-forward", embargo: int | timedelta = 0) -> TrainResult:
    """Train, evaluate, export and register one model; see the module docstring. ``features``: per view, the
    features to train on (a view not named: all of its features); ``threshold``: None chooses one;
    ``progress``: a bar by step (training set, each fold, final model, ONNX) on a terminal; ``embargo``: bars
    of the label's timeframe (an int) or a span."""
    params = params or ModelParams(kind=kind)
    if params.kind != kind:
        raise TrainingDataError(f"params.kind {params.kind!r} differs from kind {kind!r}")
    validation = _validation(cv, folds, embargo, views[0].timeframe)
    target = _target(label, kind)
    labels = [label] if label.spec == _BAR_RETURN.spec else [label, _BAR_RETURN]
    options = ExportOptions(all_bars=True, labels=labels, symbols=symbols, start=start, end=end, ttl=ttl,
                            exchange=exchange, features=features)
    bar = tqdm(total=folds + 3, desc=f"train {name}", unit="step", disable=None if progress else True)
    bar.set_postfix_str("training set")
    frame = training_set(store, views, options=options)
    bar.update()
    frame = frame.filter(pl.col(target).is_not_null()).sort("event_ts", "symbol")
    features = [feature_column(v.name, f) for v in views for f in options.features_of(v)]
    periods = frame["event_ts"].n_unique()
    if periods < 20 * (folds + 1):
        raise TrainingDataError(f"only {frame.height} labelled rows over {periods} distinct times; need at least "
                                f"{20 * (folds + 1)} times for {folds} {cv} folds (ingest and backfill more bars)")
    X = frame.select(features).to_numpy().astype(np.float64)
    y = frame[target].cast(pl.Float64).to_numpy()
    weight = frame[label.weight_column].to_numpy()
    event_ts, label_end = frame["event_ts"], frame[label.end_column]

    splits = cv_folds(cv, event_ts, label_end, folds=folds, embargo=timedelta(seconds=validation.embargo_seconds))
    oos = np.concatenate([fold.test for fold in splits])
    predictions = np.zeros((frame.height, len(CLASSES)) if kind == "classifier" else frame.height)
    fold_info = []
    for k, fold in enumerate(splits, start=1):
        bar.set_postfix_str(f"fold {k}/{len(splits)}")
        booster = fit_model(X[fold.train], y[fold.train], feature_names=features, params=params,
                            weight=weight[fold.train], event_ts=event_ts.gather(fold.train),
                            label_end=label_end.gather(fold.train))
        predictions[fold.test] = predict(booster, X[fold.test], kind)
        fold_info.append({"train_rows": int(fold.train.size), "test_rows": int(fold.test.size),
                          "test_first": str(event_ts[int(fold.test[0])]), "test_last": str(event_ts[int(fold.test[-1])]),
                          "trees": booster.num_trees()})
        bar.update()
    returns = frame[label.return_column].to_numpy()[oos]
    metrics = (regression_metrics(returns, predictions[oos]) if kind == "regressor"
               else classification_metrics(y[oos], predictions[oos], returns))
    timeframe = views[0].timeframe
    periods_per_year = 365 * 86_400_000 / timeframe_ms(timeframe)
    trades = frame[oos].select("symbol", "event_ts", pl.Series("signal", signal(predictions[oos], kind)),
                                pl.col(_BAR_RETURN.name).alias("bar_ret"))
    chosen = threshold
    if threshold is None:
        floor = 2 * cost_bps / 1e4 if kind == "regressor" else 0.0  # a round trip, in return units
        chosen, candidates = choose_threshold(trades, periods_per_year=periods_per_year, cost_bps=cost_bps, floor=floor)
    result = backtest(trades, periods_per_year=periods_per_year, cost_bps=cost_bps, threshold=chosen)
    warnings = _cost_warnings(result, cost_bps)

    bar.set_postfix_str("final model")
    final = fit_model(X, y, feature_names=features, params=params, weight=weight, event_ts=event_ts, label_end=label_end)
    bar.update()
    bar.set_postfix_str("ONNX export")
    exported = export_onnx(final, X[oos], kind=kind, dtype=onnx_dtype)
    reference = ModelReference(
        frame.height, {name: Distribution.of(X[:, j]) for j, name in enumerate(features)},
        Distribution.of(signal(predict(final, X, kind), kind)),
        signal_figures(trades.select("symbol", pl.col("event_ts").alias("ts"), pl.col("signal").alias("score"),
                                     pl.Series("position", positions_for(trades["signal"].to_numpy(), chosen)),
                                     pl.Series("label_ret", returns), "bar_ret"), cost_bps=cost_bps))
    bar.update()
    bar.close()
    ttl_used = options.view_ttls(views)
    fingerprint = frame_fingerprint(frame.select("symbol", "event_ts", *features, target, label.end_column,
                                                 label.weight_column))
    settings = {"kind": kind, "label": label.spec, "target": target, "features": features, "params": params.as_dict(),
                "views": {v.name: v.version for v in views}, "ttl_seconds": {k: v.total_seconds() for k, v in ttl_used.items()},
                "folds": folds, "cv": cv, "embargo_seconds": validation.embargo_seconds, "onnx_dtype": onnx_dtype, "cost_bps": cost_bps, "threshold": threshold,
                "libraries": library_versions()}
    version = model_version(fingerprint, settings)
    view_of = {feature_column(v.name, f): v for v in views for f in options.features_of(v)}
    report = {"name": name, "version": version, "kind": kind, "label": label.spec, "target": target,
              "metrics": metrics, "validation": _validation_report(validation, label), "folds": fold_info,
              "out_of_sample_rows": int(oos.size),
              "backtest": {"model": result.strategy, "buy_and_hold": result.buy_and_hold, **result.settings,
                           "threshold_selection": "given" if threshold is not None else {
                               "rule": "best out-of-sample net total return among the candidates, on the folds "
                                       "reported here; ties: the larger threshold",
                               "candidates": [{"threshold": c, "total_return": r} for c, r in candidates.items()]}},
              "onnx": exported.as_dict(), "warnings": list(warnings)}
    meta = ModelMeta(
        name=name, version=version, kind=kind, trained_at=now,
        features=tuple(FeatureColumn(c, view_of[c].name, c.split("__", 1)[1], view_of[c].version, view_of[c].timeframe,
                                     ttl_used[view_of[c].name].total_seconds()) for c in features),
        views=tuple(ViewInfo(v.name, v.version, v.timeframe) for v in views),
        label=LabelInfo(label.spec, label.kind, label.h, target, timeframe, label.end_column),
        classes=CLASSES if kind == "classifier" else None,
        training=TrainingInfo(frame.height, tuple(sorted(frame["symbol"].unique().to_list())), event_ts.min(),
                              event_ts.max(), fingerprint, label.weight_column, final.num_trees()),
        params=params.as_dict(), metrics=metrics,
        backtest=BacktestSummary(result.strategy, result.buy_and_hold), validation=validation,
        onnx=OnnxInfo.from_export(exported), threshold=chosen, libraries=settings["libraries"])
    created = False
    with publish(models_root, name, version) as staging:
        meta = dataclasses.replace(meta, reference=ReferenceFile(REFERENCE_FILE, reference.write(staging)))
        write_model(staging, meta, onnx_model=exported.model, model_text=final.model_to_string())
        importance = dict(zip(features, final.feature_importance("gain").tolist(), strict=True))
        write_report(staging, report, curve=result.curve, importance=importance, title=f"{name} {version}")
        created = not (Path(models_root) / name / version).exists()
    return TrainResult(name, version, Path(models_root) / name / version, meta, report, created, warnings)


def _validation(cv: CvScheme, folds: int, embargo: int | timedelta, timeframe: str) -> Validation:
    """The cross-validation settings, checked before any work: ``embargo`` in bars of ``timeframe`` or a span.

    >>> _validation("purged-kfold", 4, 3, "1h")
    Validation(scheme='purged-kfold', folds=4, embargo_seconds=10800.0, embargo_bars=3.0)
    >>> _validation("purged-kfold", 1, timedelta(0), "1h")
    Traceback (most recent call last):
    ...
    featurestore.errors.TrainingDataError: purged k-fold needs at least 2 folds (each the test block once), got 1
    """
    bar = timedelta(milliseconds=timeframe_ms(timeframe))
    span = embargo if isinstance(embargo, timedelta) else int(embargo) * bar
    if span < timedelta(0):
        raise TrainingDataError(f"the embargo must not be negative, got {embargo}")
    if cv not in CV_SCHEMES:
        raise TrainingDataError(f"unknown cross-validation {cv!r}; use one of {', '.join(CV_SCHEMES)}")
    least = 2 if cv == "purged-kfold" else 1
    if folds < least:
        raise TrainingDataError(f"{cv.replace('-', ' ').replace('kfold', 'k-fold')} needs at least {least} fold"
                                f"{'s (each the test block once)' if least > 1 else ''}, got {folds}")
    return Validation(cv, folds, span.total_seconds(), span / bar)


def _validation_report(validation: Validation, label: LabelSpec) -> dict[str, Any]:
    """``report.json``'s account of the cross-validation."""
    after = "after each test block" + (" and before it" if validation.scheme == "walk-forward" else "")
    span = timedelta(seconds=validation.embargo_seconds)
    return {**dataclasses.asdict(validation),
            "purge": f"training rows whose [event_ts, {label.end_column}] meets a test block are dropped",
            "embargo": f"{validation.embargo_bars:g} bar(s) ({span}) {after}" if span else "none"}


def _cost_warnings(result: Backtest, cost_bps: float) -> tuple[str, ...]:
    """A warning when the backtest's costs are larger than its gross return (they decide the result)."""
    model = result.strategy
    if not model["costs_dominate"]:
        return ()
    return (f"costs dominate the backtest: {model['turnover_per_period']:.2f} position changes per bar at "
            f"{cost_bps:g} bps per side cost {model['costs']:.1%} over the out-of-sample bars, more than the "
            f"gross return ({model['gross_return']:+.1%}); trade less (a higher --threshold, a longer label "
            f"horizon) or use a model with more edge",)


def summary_table(result: TrainResult) -> str:
    """A plain-text table: model vs buy-and-hold, prediction metrics and the ONNX parity figures."""
    bt, onnx = result.report["backtest"], result.report["onnx"]
    rows = [("total return", "total_return", "{:+.2%}"), ("CAGR", "cagr", "{:+.2%}"), ("Sharpe", "sharpe", "{:.2f}"),
            ("Sortino", "sortino", "{:.2f}"), ("max drawdown", "max_drawdown", "{:.2%}"), ("Calmar", "calmar", "{:.2f}"),
            ("win rate", "win_rate", "{:.1%}"), ("turnover / bar", "turnover_per_period", "{:.3f}"),
            ("trades", "trades", "{:,}")]

    def cell(side: dict, key: str, fmt: str) -> str:
        value = side.get(key)
        return "n/a" if value is None or (isinstance(value, float) and not math.isfinite(value)) else fmt.format(value)

    cv = result.report["validation"]
    lines = [f"model {result.name} version {result.version} ({result.meta.kind}, label {result.meta.label.spec})",
             f"cross-validation: {cv['scheme']}, {cv['folds']} test block(s), purged on {result.meta.label.end_column}, "
             f"embargo {cv['embargo']}",
             f"out-of-sample backtest, {bt['cost_bps_per_side']:g} bps per side, position = sign(signal) when "
             f"|signal| > {bt['threshold']:g}"
             + (" (chosen on these folds, cost-aware)" if bt["threshold_selection"] != "given" else "")
             + f"; {bt['execution']}",
             f"{'':<16}{'model':>14}{'buy & hold':>14}"]
    lines += [f"{title:<16}{cell(bt['model'], key, fmt):>14}{cell(bt['buy_and_hold'], key, fmt):>14}"
              for title, key, fmt in rows]
    lines.append("prediction metrics: " + ", ".join(
        f"{k} {v:.4g}" for k, v in result.report["metrics"].items() if isinstance(v, float) and math.isfinite(v)))
    p, p32 = onnx["parity"], onnx["float32_parity"]
    lines.append(f"ONNX parity over {p['rows']:,} rows: published {p['dtype']} max abs diff {p['max_abs_diff']:.3g}"
                 + (f", class mismatches {p['class_mismatches']}" if p["class_mismatches"] is not None else "")
                 + f"; float32 inputs would give max abs diff {p32['max_abs_diff']:.3g}"
                 + (f", class mismatches {p32['class_mismatches']}" if p32["class_mismatches"] is not None else ""))
    lines.append(f"artifacts: {result.path}" + ("" if result.created else " (this version was stored already)"))
    return "\n".join(lines)
