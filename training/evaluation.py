"""Out-of-sample evaluation: prediction metrics, a cost-aware backtest beside buy-and-hold, report and charts.

Backtest rules (one row per symbol and bar, as ``--all-bars`` exports give):

- The row stamped ``t`` holds features known at ``t`` (bars closed by then, T); its position is held over
  the next bar, the one opening at ``t`` (T+1), earning ``exp(bar_ret) - 1`` with ``bar_ret`` that bar's
  log return (``future_ret:h=1`` of the row). The bar that produced the information is never traded.
- Position: ``+1`` if the signal is ``> threshold``, ``-1`` if ``< -threshold``, else ``0``.
- Costs: ``cost_bps`` (default 5) per side on every change of position, ``|p_t - p_{t-1}|`` units
  (a flip long -> short pays twice); the first position pays its entry. The strategy's metrics also hold
  ``gross_return`` and ``costs`` (sums of the portfolio's per-bar returns before costs and of its costs)
  and ``costs_dominate``: costs larger than the gross return's size, so they decide the result.
- Threshold (``choose_threshold``): when none is given, the one of a few candidates (a floor, then
  quantiles of ``|signal|`` above it, and the largest ``|signal|``, which never trades) with the best net
  total return on these out-of-sample rows; ties go to the larger one, which trades less.
- Portfolio: the equal-weight mean over symbols of each bar's return; buy-and-hold is ``+1`` on every
  symbol from the first row, paying one entry.
- Annualisation: ``periods_per_year`` (365 days of bars: crypto trades around the clock).

>>> import numpy as np
>>> m = performance(np.array([0.01, -0.02, 0.03]), periods_per_year=365)
>>> round(m["total_return"], 6), round(m["max_drawdown"], 4)
(0.019494, 0.02)
>>> regression_metrics(np.array([0.1, -0.2, 0.3]), np.array([0.2, -0.1, 0.1]))["directional_accuracy"]
1.0
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from featurestore.atomic import atomic_path, write_bytes_atomic
from training.reference import SideFigures, SignalFigures

__all__ = [
    "Backtest",
    "backtest",
    "choose_threshold",
    "classification_metrics",
    "json_safe",
    "performance",
    "plot_equity",
    "plot_importance",
    "positions_for",
    "regression_metrics",
    "signal_figures",
    "write_report",
]


def json_safe(value: Any) -> Any:
    """JSON-safe: NaN/inf -> None, numpy scalars -> Python."""
    if isinstance(value, Mapping):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """RMSE, MAE, R², Spearman IC and directional accuracy (share of rows with ``sign(pred) == sign(true)``
    among rows where both are non-zero)."""
    from scipy.stats import spearmanr

    y_true, y_pred = np.asarray(y_true, dtype=np.float64), np.asarray(y_pred, dtype=np.float64)
    error = y_pred - y_true
    total = ((y_true - y_true.mean()) ** 2).sum()
    moving = (y_true != 0) & (y_pred != 0)
    return {
        "rows": int(y_true.size),
        "rmse": float(np.sqrt((error ** 2).mean())),
        "mae": float(np.abs(error).mean()),
        "r2": float(1.0 - (error ** 2).sum() / total) if total > 0 else float("nan"),
        "ic_spearman": float(spearmanr(y_pred, y_true).statistic) if y_true.size > 2 else float("nan"),
        "directional_accuracy": float((np.sign(y_pred[moving]) == np.sign(y_true[moving])).mean())
        if moving.any() else float("nan"),
    }


def classification_metrics(y_true: np.ndarray, proba: np.ndarray, returns: np.ndarray | None = None) -> dict[str, float]:
    """Accuracy, balanced accuracy, log loss for classes -1/0/1 (``proba`` columns in that order); with the
    realised ``returns`` also the Spearman IC of ``P(up) - P(down)``."""
    from scipy.stats import spearmanr

    y_true = np.asarray(y_true).astype(np.int64)
    index = y_true + 1
    predicted = proba.argmax(axis=1)
    recalls = [float((predicted[index == k] == k).mean()) for k in range(proba.shape[1]) if (index == k).any()]
    out = {
        "rows": int(y_true.size),
        "accuracy": float((predicted == index).mean()),
        "balanced_accuracy": float(np.mean(recalls)) if recalls else float("nan"),
        "log_loss": float(-np.log(np.clip(proba[np.arange(y_true.size), index], 1e-15, 1.0)).mean()),
        "class_share": {str(c): float((y_true == c).mean()) for c in (-1, 0, 1)},
    }
    if returns is not None and y_true.size > 2:
        out["ic_spearman"] = float(spearmanr(proba[:, 2] - proba[:, 0], returns).statistic)
    return out


def performance(returns: np.ndarray, *, periods_per_year: float, positions: np.ndarray | None = None,
                gross: np.ndarray | None = None) -> dict[str, float]:
    """Metrics of a series of simple per-period returns: total return, CAGR, annualised volatility, Sharpe,
    Sortino, max drawdown, Calmar; with ``positions`` (per symbol-bar) turnover and exposure, with ``gross``
    (per symbol-bar P&L of in-market rows) the win rate."""
    returns = np.asarray(returns, dtype=np.float64)
    n = returns.size
    equity = np.cumprod(1.0 + returns) if n else np.ones(1)
    drawdown = 1.0 - equity / np.maximum.accumulate(equity)
    total = float(equity[-1] - 1.0) if n else 0.0
    with np.errstate(over="ignore"):  # a short sample annualised can overflow: inf, written as null
        cagr = float(np.expm1(np.log(equity[-1]) * periods_per_year / n)) if n and equity[-1] > 0 else float("nan")
    std = returns.std(ddof=1) if n > 1 else float("nan")
    downside = math.sqrt(float(np.mean(np.minimum(returns, 0.0) ** 2))) if n else float("nan")
    scale = math.sqrt(periods_per_year)
    max_dd = float(drawdown.max()) if n else 0.0
    out = {
        "periods": n,
        "total_return": total,
        "cagr": cagr,
        "volatility": float(std * scale) if n > 1 else float("nan"),
        "sharpe": float(returns.mean() / std * scale) if n > 1 and std > 0 else float("nan"),
        "sortino": float(returns.mean() / downside * scale) if n and downside > 0 else float("nan"),
        "max_drawdown": max_dd,
        "calmar": cagr / max_dd if max_dd > 0 else float("nan"),
    }
    if positions is not None:
        positions = np.asarray(positions, dtype=np.float64)
        out["exposure"] = float(np.abs(positions).mean()) if positions.size else float("nan")
    if gross is not None:
        gross = np.asarray(gross, dtype=np.float64)
        out["win_rate"] = float((gross > 0).mean()) if gross.size else float("nan")
    return out


@dataclass(frozen=True)
class Backtest:
    """Strategy and buy-and-hold metrics, and the equity/drawdown curves by ``event_ts``."""

    strategy: dict[str, float]
    buy_and_hold: dict[str, float]
    curve: pl.DataFrame
    settings: dict[str, Any]


def positions_for(signal: np.ndarray, threshold: float) -> np.ndarray:
    """The backtest's position of each score: 1 above ``threshold``, -1 below minus it, else 0."""
    return np.where(signal > threshold, 1.0, np.where(signal < -threshold, -1.0, 0.0))


def backtest(frame: pl.DataFrame, *, periods_per_year: float, cost_bps: float = 5.0, threshold: float = 0.0,
             signal: str = "signal", bar_return: str = "bar_ret") -> Backtest:
    """Run the rules of the module docstring over ``frame`` (``symbol``, ``event_ts``, ``signal``, ``bar_ret``).

    Rows with a null ``bar_ret`` (bar not closed yet) are dropped.
    """
    cost = cost_bps / 1e4
    rows = frame.select("symbol", "event_ts", pl.col(signal).alias("signal"), pl.col(bar_return).alias("r")).filter(
        pl.col("r").is_not_null() & pl.col("signal").is_not_null()).sort("symbol", "event_ts")
    position = positions_for(rows["signal"].to_numpy(), threshold)
    simple = np.expm1(rows["r"].to_numpy())
    first = (rows["symbol"] != rows["symbol"].shift(1)).fill_null(True).to_numpy()
    previous = np.where(first, 0.0, np.roll(position, 1))
    trades = np.abs(position - previous)
    per_row = pl.DataFrame({
        "event_ts": rows["event_ts"],
        "strategy": position * simple - cost * trades,
        "buy_and_hold": simple - cost * first,
        "costs": cost * trades,
    })
    portfolio = per_row.group_by("event_ts").agg(pl.col("strategy", "buy_and_hold", "costs").mean()).sort("event_ts")
    strategy = performance(portfolio["strategy"].to_numpy(), periods_per_year=periods_per_year, positions=position,
                           gross=(position * simple)[position != 0])
    costs = float(portfolio["costs"].sum())
    strategy["costs"], strategy["gross_return"] = costs, float(portfolio["strategy"].sum()) + costs
    strategy["costs_dominate"] = costs > abs(strategy["gross_return"])
    strategy["turnover_per_period"] = float(trades.mean()) if trades.size else float("nan")
    strategy["turnover_annual"] = strategy["turnover_per_period"] * periods_per_year
    strategy["trades"] = int((trades > 0).sum())
    hold = performance(portfolio["buy_and_hold"].to_numpy(), periods_per_year=periods_per_year,
                       positions=np.ones_like(position), gross=simple)
    hold["turnover_per_period"] = float(first.mean()) if first.size else float("nan")
    hold["turnover_annual"] = hold["turnover_per_period"] * periods_per_year
    hold["trades"] = int(first.sum())
    curve = portfolio.drop("costs").with_columns(
        (1.0 + pl.col("strategy")).cum_prod().alias("strategy_equity"),
        (1.0 + pl.col("buy_and_hold")).cum_prod().alias("buy_and_hold_equity"),
    ).with_columns(
        (1.0 - pl.col("strategy_equity") / pl.col("strategy_equity").cum_max()).alias("strategy_drawdown"),
        (1.0 - pl.col("buy_and_hold_equity") / pl.col("buy_and_hold_equity").cum_max()).alias("buy_and_hold_drawdown"),
    )
    settings = {"cost_bps_per_side": cost_bps, "threshold": threshold, "periods_per_year": periods_per_year,
                "execution": "T+1: the row at t (bars closed by t) holds its position over the bar opening at t",
                "portfolio": "equal weight across symbols, rebalanced every bar"}
    return Backtest(strategy, hold, curve, settings)


def signal_figures(frame: pl.DataFrame, *, cost_bps: float = 5.0) -> SignalFigures:
    """IC, hit rate and the figures of each side held, for scored rows against what happened: ``frame`` holds
    ``symbol``, ``ts``, ``score``, ``position`` (1 LONG, -1 SHORT, 0 FLAT), ``label_ret`` (the label's log
    return) and ``bar_ret`` (log return of the bar the position is held over, as ``backtest``'s); null where
    not known yet. The backtest's costs: ``cost_bps`` per side on each change of position, charged to the
    bar held after it, from FLAT before each symbol's first row. The backtest's out-of-sample figures and a
    live model's (``serving.monitoring``) both come from here.

    >>> rows = pl.DataFrame({"symbol": ["A"] * 4, "ts": [1, 2, 3, 4], "score": [0.2, 0.1, -0.3, 0.4],
    ...                      "position": [1, 1, -1, 0], "label_ret": [0.01, -0.02, -0.01, 0.03],
    ...                      "bar_ret": [0.01, -0.02, -0.01, 0.03]})
    >>> figures = signal_figures(rows, cost_bps=0.0)
    >>> figures.rows, figures.hit_rate, figures.sides["LONG"].bars, figures.sides["SHORT"].hit_rate
    (4, 0.75, 2, 1.0)
    """
    from scipy.stats import spearmanr

    rows = frame.sort("symbol", "ts")
    score, label = rows["score"].cast(pl.Float64).to_numpy(), rows["label_ret"].cast(pl.Float64).fill_null(np.nan).to_numpy()
    known = np.isfinite(score) & np.isfinite(label)
    moving = known & (score != 0) & (label != 0)
    ic = float(spearmanr(score[known], label[known]).statistic) if known.sum() > 2 else float("nan")
    hit = float((np.sign(score[moving]) == np.sign(label[moving])).mean()) if moving.any() else float("nan")
    position = rows["position"].cast(pl.Float64).to_numpy()
    first = (rows["symbol"] != rows["symbol"].shift(1)).fill_null(True).to_numpy()
    previous = np.where(first, 0.0, np.roll(position, 1))
    gross = position * np.expm1(rows["bar_ret"].cast(pl.Float64).fill_null(np.nan).to_numpy())
    net = gross - cost_bps / 1e4 * np.abs(position - previous)
    sides = {}
    for side, sign in (("LONG", 1.0), ("SHORT", -1.0)):
        held = (position == sign) & np.isfinite(gross)
        sides[side] = SideFigures(int(held.sum()), float(net[held].mean()) if held.any() else None,
                                  float((gross[held] > 0).mean()) if held.any() else None)
    return SignalFigures(int(known.sum()), cost_bps, ic if math.isfinite(ic) else None, hit if math.isfinite(hit) else None,
                         sides)


def choose_threshold(frame: pl.DataFrame, *, periods_per_year: float, cost_bps: float, floor: float = 0.0
                     ) -> tuple[float, dict[float, float]]:
    """The ``|signal|`` threshold with the best net total return over ``frame`` (as for ``backtest``) among
    ``floor``, the 50/75/90/95/99% quantiles of ``|signal|`` above it and the largest ``|signal|`` (no trade);
    ties go to the larger threshold. Returns it and every candidate's total return.

    >>> rng = np.random.default_rng(0)
    >>> noise = pl.DataFrame({"symbol": "A", "event_ts": range(2000), "signal": rng.normal(size=2000),
    ...                       "bar_ret": rng.normal(scale=1e-3, size=2000)})  # a signal unrelated to returns
    >>> threshold, returns = choose_threshold(noise, periods_per_year=365, cost_bps=5)
    >>> threshold == noise["signal"].abs().max(), returns[threshold]  # trading it only pays costs: no trade
    (True, 0.0)
    """
    magnitude = frame["signal"].abs().drop_nulls()
    quantiles = [float(magnitude.quantile(q, "linear")) for q in (0.5, 0.75, 0.9, 0.95, 0.99)]
    candidates = sorted({floor, *(q for q in quantiles if q > floor), max(float(magnitude.max()), floor)})
    returns = {c: backtest(frame, periods_per_year=periods_per_year, cost_bps=cost_bps, threshold=c)
               .strategy["total_return"] for c in candidates}
    best = max(returns, key=lambda c: (returns[c], c))
    return best, returns


def plot_equity(curve: pl.DataFrame, path: Path, *, title: str) -> None:
    """Equity (strategy vs buy-and-hold) above drawdown, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6), sharex=True, height_ratios=(2, 1))
    times = curve["event_ts"].to_list()
    for column, label in (("strategy", "model"), ("buy_and_hold", "buy and hold")):
        top.plot(times, curve[f"{column}_equity"].to_numpy(), label=label, linewidth=1)
        bottom.fill_between(times, -curve[f"{column}_drawdown"].to_numpy(), 0, alpha=0.4, label=label)
    top.set_ylabel("equity (start = 1)")
    top.set_title(title)
    top.legend(loc="upper left")
    top.grid(alpha=0.3)
    bottom.set_ylabel("drawdown")
    bottom.grid(alpha=0.3)
    figure.autofmt_xdate()
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    plt.close(figure)


def plot_importance(importance: Mapping[str, float], path: Path, *, title: str, top: int = 25) -> None:
    """Horizontal bars of the largest ``top`` importances, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    items = sorted(importance.items(), key=lambda kv: kv[1])[-top:]
    figure, axes = plt.subplots(figsize=(8, 0.3 * len(items) + 1.2))
    axes.barh([k for k, _ in items], [v for _, v in items])
    axes.set_xlabel("total gain")
    axes.set_title(title)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    plt.close(figure)


def write_report(directory: Path, report: Mapping[str, Any], *, curve: pl.DataFrame | None = None,
                 importance: Mapping[str, float] | None = None, title: str = "") -> list[Path]:
    """``report.json`` (NaN written as null), plus ``equity.png`` and ``importance.png`` when given data."""
    directory.mkdir(parents=True, exist_ok=True)
    written = [directory / "report.json"]
    write_bytes_atomic(json.dumps(json_safe(report), indent=1, sort_keys=True).encode(), written[0])
    if curve is not None and curve.height:
        plot_equity(curve, directory / "equity.png", title=f"{title}: out-of-sample equity and drawdown")
        written.append(directory / "equity.png")
    if importance:
        plot_importance(importance, directory / "importance.png", title=f"{title}: feature importance (gain)")
        written.append(directory / "importance.png")
    return written
