"""Labels: forward-looking targets computed from bars. They live apart from features and are never served.

Alignment (``docs/semantics.md``): the feature row stamped ``t`` uses bars that closed by ``t``.
Its ``future_ret`` with horizon ``h`` is ``log(close[t+h-1] / close[t-1])`` in the doc's bar-index terms
(bar ``t`` = the bar opening at ``t``). Counted in stored bars: for the row stamped at the close of bar
``i``, it is ``log(close[i+h] / close[i])``; with ``h = 1`` it is the return of the bar opening at ``t``.
Horizons count stored bars (a gap in the bars is not filled). A label that needs bars not stored yet is null.

Every label also has ``<name>__end_ts``: the close time of the last bar it depends on (for purging).

- ``future_ret:h=H``: the log return above.
- ``bucket:h=H,x=X``: ``-1`` if that return is ``< -X``, ``1`` if ``> X``, else ``0`` (default ``X = 0.01``).
- ``triple_barrier:h=H,pt=P,sl=S[,atr=N]``: entry at ``close[i]``; the upper barrier is ``entry + P * ATR_N``
  and the lower ``entry - S * ATR_N`` (Wilder ATR of the ``N`` bars up to ``i``), or ``entry * (1 + P)`` and
  ``entry * (1 - S)`` without ``atr``; ``0`` disables a barrier. Bars ``i+1 .. i+H`` are scanned in order:
  ``high >= upper`` is a profit-take (label ``1``), ``low <= lower`` a stop-loss (``-1``); the return is
  the log return to the barrier price. **Tie rule**: when one bar touches both barriers the stop-loss is
  taken (the order inside a bar is unknown: assume the worse). Without a touch by bar ``i+H`` the label is
  ``0`` with the return to ``close[i+H]``; without a touch and with bar ``i+H`` not stored, null.

>>> spec = parse_label("bucket:h=2,x=0.05")
>>> spec.name, spec.spec, spec.columns
('bucket_h2', 'bucket:h=2,x=0.05', ['bucket_h2', 'bucket_h2__ret', 'bucket_h2__end_ts'])
>>> import numpy as np
>>> np.round(future_log_return(np.array([100.0, 110.0, 99.0]), 1), 4)
array([ 0.0953, -0.1054,     nan])
>>> parse_label("future_ret:h=0")
Traceback (most recent call last):
...
featurestore.errors.LabelSpecError: label 'future_ret:h=0': h must be an integer >= 1, got '0'
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import polars as pl

from featurestore.builtin_views import true_range, wilder
from featurestore.errors import LabelSpecError
from featurestore.timeframes import timeframe_ms

__all__ = [
    "LABEL_KINDS",
    "LabelSpec",
    "bucket",
    "future_log_return",
    "parse_label",
    "triple_barrier",
    "uniqueness_weights",
]

LabelKind = Literal["future_ret", "bucket", "triple_barrier"]
LABEL_KINDS: tuple[str, ...] = ("future_ret", "bucket", "triple_barrier")
_KEYS = {"future_ret": ("h",), "bucket": ("h", "x"), "triple_barrier": ("h", "pt", "sl", "atr")}
_EXAMPLES = {"future_ret": "future_ret:h=1", "bucket": "bucket:h=12,x=0.01",
             "triple_barrier": "triple_barrier:h=24,pt=2,sl=2,atr=14"}


@dataclass(frozen=True)
class LabelSpec:
    """One label: its kind and parameters. Build it with ``parse_label``."""

    kind: LabelKind
    h: int
    x: float = 0.01
    pt: float = 0.0
    sl: float = 0.0
    atr: int | None = None

    @property
    def name(self) -> str:
        """Column name of the label value: ``future_ret_h1``, ``bucket_h12``, ``tb_h24``."""
        return {"future_ret": "future_ret", "bucket": "bucket", "triple_barrier": "tb"}[self.kind] + f"_h{self.h}"

    @property
    def spec(self) -> str:
        """The canonical spec string (parses back to an equal ``LabelSpec``)."""
        if self.kind == "future_ret":
            return f"future_ret:h={self.h}"
        if self.kind == "bucket":
            return f"bucket:h={self.h},x={self.x:g}"
        return f"triple_barrier:h={self.h},pt={self.pt:g},sl={self.sl:g}" + (f",atr={self.atr}" if self.atr else "")

    @property
    def is_class(self) -> bool:
        """True for three-class labels (-1, 0, 1)."""
        return self.kind != "future_ret"

    @property
    def return_column(self) -> str:
        """The column holding the label's log return (the value itself for ``future_ret``)."""
        return self.name if self.kind == "future_ret" else f"{self.name}__ret"

    @property
    def end_column(self) -> str:
        return f"{self.name}__end_ts"

    @property
    def weight_column(self) -> str:
        """Sample-uniqueness weight, added by the training-set export."""
        return f"{self.name}__weight"

    @property
    def columns(self) -> list[str]:
        """Columns ``compute`` adds besides ``ts``."""
        return list(dict.fromkeys([self.name, self.return_column, self.end_column]))

    def weights(self, start: np.ndarray, end: np.ndarray, grid: np.ndarray) -> np.ndarray:
        """Sample-uniqueness weights (see ``uniqueness_weights``)."""
        return uniqueness_weights(start, end, grid)

    def compute(self, bars: pl.DataFrame, timeframe: str) -> pl.DataFrame:
        """Labels for one symbol's bars (sorted by ``ts`` = open time): one row per bar, stamped ``ts`` =
        the bar's close (the feature row the label belongs to), with ``columns``."""
        step = timeframe_ms(timeframe)
        close = bars["close"].to_numpy().astype(np.float64)
        close_ts = bars.select(pl.col("ts") + pl.duration(milliseconds=step)).to_series()
        if self.kind == "triple_barrier":
            high, low = bars["high"].to_numpy().astype(np.float64), bars["low"].to_numpy().astype(np.float64)
            if self.atr:
                width = bars.select(wilder(true_range(), self.atr)).to_series().fill_null(np.nan).to_numpy()
                upper = close + (self.pt * width if self.pt else np.inf)
                lower = close - (self.sl * width if self.sl else np.inf)
            else:
                upper = close * (1.0 + self.pt) if self.pt else np.full(close.shape, np.inf)
                lower = close * (1.0 - self.sl) if self.sl else np.full(close.shape, -np.inf)
            value, ret, end = triple_barrier(high, low, close, self.h, upper, lower)
        else:
            ret = future_log_return(close, self.h)
            value = ret if self.kind == "future_ret" else bucket(ret, self.x)
            index = np.arange(close.size) + self.h
            end = np.where(np.isfinite(ret), index, -1)
        end_ts = close_ts.gather(np.clip(end, 0, None)).to_frame("e").select(
            pl.when(pl.Series(end >= 0)).then(pl.col("e"))).to_series()
        out = {"ts": close_ts, self.name: pl.Series(value).fill_nan(None)}
        if self.is_class:
            out[self.name] = out[self.name].cast(pl.Int8)
            out[self.return_column] = pl.Series(ret).fill_nan(None)
        out[self.end_column] = end_ts
        return pl.DataFrame(out)


def _number(spec: str, key: str, text: str, *, integer: bool, minimum: float, strict: bool) -> float | int:
    kind = "an integer" if integer else "a number"
    bound = f"{'>' if strict else '>='} {minimum:g}"
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        value = None
    if value is None or not math.isfinite(value) or value < minimum or (strict and value == minimum):
        raise LabelSpecError(f"label {spec!r}: {key} must be {kind} {bound}, got {text!r}")
    return value


def parse_label(text: str) -> LabelSpec:
    """Parse ``kind:key=value,...`` (see the module docstring); errors name the part that is wrong."""
    kind, _, rest = text.strip().partition(":")
    if kind not in _KEYS:
        close = difflib.get_close_matches(kind, _KEYS, n=1)
        raise LabelSpecError(f"label {text!r}: unknown kind {kind!r}{'; did you mean ' + repr(close[0]) + '?' if close else ''}"
                             f" (kinds: {', '.join(LABEL_KINDS)}; e.g. {', '.join(_EXAMPLES.values())})")
    params: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = part.partition("=")
        key = key.strip()
        if not eq or not value.strip():
            raise LabelSpecError(f"label {text!r}: expected key=value, got {part!r} (e.g. {_EXAMPLES[kind]})")
        if key not in _KEYS[kind]:
            raise LabelSpecError(f"label {text!r}: unknown parameter {key!r} for {kind} "
                                 f"(parameters: {', '.join(_KEYS[kind])}; e.g. {_EXAMPLES[kind]})")
        if key in params:
            raise LabelSpecError(f"label {text!r}: parameter {key!r} given twice")
        params[key] = value.strip()
    if "h" not in params:
        raise LabelSpecError(f"label {text!r}: the horizon h is required (e.g. {_EXAMPLES[kind]})")
    h = _number(text, "h", params["h"], integer=True, minimum=1, strict=False)
    if kind == "future_ret":
        return LabelSpec("future_ret", h)
    if kind == "bucket":
        return LabelSpec("bucket", h, x=_number(text, "x", params.get("x", "0.01"), integer=False, minimum=0, strict=True))
    missing = [key for key in ("pt", "sl") if key not in params]
    if missing:
        raise LabelSpecError(f"label {text!r}: {' and '.join(missing)} required (e.g. {_EXAMPLES[kind]}; "
                             f"ATR multiples with atr=N, else fractions of the entry price; 0 disables a barrier)")
    pt = _number(text, "pt", params["pt"], integer=False, minimum=0, strict=False)
    sl = _number(text, "sl", params["sl"], integer=False, minimum=0, strict=False)
    if pt == 0 and sl == 0:
        raise LabelSpecError(f"label {text!r}: pt and sl are both 0; enable at least one barrier")
    if "atr" not in params and max(pt, sl) >= 1:
        raise LabelSpecError(f"label {text!r}: without atr=N, pt and sl are fractions of the entry price and must "
                             f"be < 1 (e.g. pt=0.02); for ATR multiples add atr=14")
    atr = _number(text, "atr", params["atr"], integer=True, minimum=1, strict=False) if "atr" in params else None
    return LabelSpec("triple_barrier", h, pt=pt, sl=sl, atr=atr)


def future_log_return(close: np.ndarray, h: int) -> np.ndarray:
    """``log(close[i+h] / close[i])`` for each bar ``i``; NaN where bar ``i+h`` does not exist."""
    out = np.full(close.shape, np.nan)
    if close.size > h:
        out[:-h] = np.log(close[h:] / close[:-h])
    return out


def bucket(ret: np.ndarray, x: float) -> np.ndarray:
    """``-1`` below ``-x``, ``1`` above ``x``, ``0`` in between (both bounds neutral); NaN stays NaN.

    >>> bucket(np.array([-0.02, -0.01, 0.0, 0.01, 0.02, np.nan]), 0.01)
    array([-1.,  0.,  0.,  0.,  1., nan])
    """
    out = np.where(ret < -x, -1.0, np.where(ret > x, 1.0, 0.0))
    return np.where(np.isnan(ret), np.nan, out)


def triple_barrier(high: np.ndarray, low: np.ndarray, close: np.ndarray, h: int, upper: np.ndarray,
                   lower: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(label, log return, index of the bar that ended the label; -1 if unknown) for every bar ``i``.

    ``upper``/``lower`` are barrier prices per entry bar (``inf``/``-inf`` disable one; NaN gives a null
    label). Bars ``i+1 .. i+h`` are scanned; a bar touching both barriers counts as a stop-loss.

    >>> label, ret, end = triple_barrier(np.array([10.0, 10.5, 11.2]), np.array([10.0, 9.8, 10.0]),
    ...                                   np.array([10.0, 10.0, 11.0]), 2, np.array([11.0] * 3), np.array([9.0] * 3))
    >>> label.tolist(), end.tolist()
    ([1.0, 1.0, nan], [2, 2, -1])
    """
    n = close.size
    label, ret, end = np.full(n, np.nan), np.full(n, np.nan), np.full(n, -1, dtype=np.int64)
    pending = np.isfinite(upper) | np.isfinite(lower)
    pending &= ~np.isnan(upper) & ~np.isnan(lower) & np.isfinite(close)
    for k in range(1, h + 1):
        if k >= n:
            break
        high_k, low_k = np.full(n, np.nan), np.full(n, np.nan)
        high_k[:-k], low_k[:-k] = high[k:], low[k:]
        down = pending & (low_k <= lower)
        up = pending & (high_k >= upper) & ~down
        for hit, value, barrier in ((down, -1.0, lower), (up, 1.0, upper)):
            label[hit], ret[hit], end[hit] = value, np.log(barrier[hit] / close[hit]), np.flatnonzero(hit) + k
        pending &= ~(down | up)
    vertical = pending & (np.arange(n) + h < n)
    rows = np.flatnonzero(vertical)
    label[rows], ret[rows], end[rows] = 0.0, np.log(close[rows + h] / close[rows]), rows + h
    return label, ret, end


def uniqueness_weights(start: np.ndarray, end: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Average uniqueness of each label (López de Prado, AFML ch. 4) for one symbol.

    Label ``k`` spans the bars of ``grid`` (sorted bar close times) in ``(start[k], end[k]]``; a bar's
    concurrency is the number of labels spanning it; the weight is the mean of ``1 / concurrency`` over
    the label's bars, in ``(0, 1]``. Labels with a NaN/NaT end, or spanning no bar, get NaN.

    >>> uniqueness_weights(np.array([0, 1, 5]), np.array([2, 3, 6]), np.arange(1, 7)).tolist()
    [0.75, 0.75, 1.0]
    """
    start, end, grid = (np.asarray(a).astype(np.float64) for a in (start, end, grid))
    valid = ~np.isnan(end) & ~np.isnan(start)
    lo = np.searchsorted(grid, start, side="right")
    hi = np.searchsorted(grid, np.where(valid, end, -np.inf), side="right")
    hi = np.maximum(hi, lo)
    delta = np.zeros(grid.size + 1)
    np.add.at(delta, lo[valid], 1.0)
    np.add.at(delta, hi[valid], -1.0)
    concurrency = np.cumsum(delta)[:-1]
    inverse = np.concatenate([[0.0], np.cumsum(np.divide(1.0, concurrency, out=np.zeros_like(concurrency),
                                                         where=concurrency > 0))])
    span = hi - lo
    with np.errstate(invalid="ignore", divide="ignore"):
        weights = (inverse[hi] - inverse[lo]) / span
    return np.where(valid & (span > 0), np.minimum(weights, 1.0), np.nan)  # prefix sums may round above 1
