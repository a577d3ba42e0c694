"""Time-series cross-validation: walk-forward (expanding or rolling) and purged k-fold, both with an embargo.

Rows are grouped by distinct ``event_ts`` ("periods"): rows of several symbols at the same time always
fall on the same side. Each row's information window is the closed interval ``[event_ts, label_end]``
(``label_end`` = the close of the last bar its label reads, e.g. ``<label>__end_ts``). Purging drops a
training row whose window intersects the hull ``[min test event_ts, max test label_end]`` of the test
rows (closed intervals: touching counts, which is conservative); the embargo further drops training rows
that start within ``embargo`` after the test hull ends (López de Prado, AFML ch. 7). Walk-forward never
trains on anything after its test fold, so its embargo also keeps a gap of ``embargo`` before the fold:
training rows whose label ends within it are dropped. A row with an unknown label end is treated as ending
at ``+inf``. ``cv_folds`` is what ``training.train`` calls: either scheme by name, ``folds`` test blocks.

Every function returns ``Fold``s of integer row positions into the arrays given (any order).

>>> import numpy as np
>>> ts = np.arange(10) * 60            # one row a minute
>>> folds = walk_forward(ts, initial=4, step=3, label_end=ts + 60)
>>> [(f.train.tolist(), f.test.tolist()) for f in folds]
[([0, 1, 2], [4, 5, 6]), ([0, 1, 2, 3, 4, 5], [7, 8, 9])]
>>> [f.train.tolist() for f in walk_forward(ts, initial=4, step=3, label_end=ts + 60, embargo=60)]
[[0, 1], [0, 1, 2, 3, 4]]
>>> [f.test.tolist() for f in purged_kfold(ts, ts + 60, n_splits=2)]
[[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
>>> [f.train.tolist() for f in cv_folds("purged-kfold", ts, ts + 60, folds=2, embargo=120)]
[[8, 9], [0, 1, 2, 3]]
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal, get_args

import numpy as np

from featurestore.errors import TrainingDataError

__all__ = ["CV_SCHEMES", "CvScheme", "Fold", "cv_folds", "purge", "purged_kfold", "to_ns", "walk_forward"]

CvScheme = Literal["walk-forward", "purged-kfold"]
#: The cross-validation schemes ``cv_folds`` (and ``featurestore train --cv``) know.
CV_SCHEMES: tuple[str, ...] = get_args(CvScheme)


@dataclass(frozen=True)
class Fold:
    """Row positions of one split (both sorted ascending)."""

    train: np.ndarray
    test: np.ndarray


def to_ns(values: object) -> np.ndarray:
    """Timestamps (numpy datetime64, polars/pandas series, or plain numbers) as float nanoseconds; NaT -> NaN."""
    if hasattr(values, "to_numpy"):
        values = values.to_numpy()
    array = np.asarray(values)
    if np.issubdtype(array.dtype, np.datetime64):
        nat = np.isnat(array)
        out = array.astype("datetime64[ns]").astype(np.int64).astype(np.float64)
        out[nat] = np.nan
        return out
    return array.astype(np.float64)


def _embargo_ns(embargo: timedelta | float) -> float:
    return embargo.total_seconds() * 1e9 if isinstance(embargo, timedelta) else float(embargo)


def purge(train: np.ndarray, test: np.ndarray, event_ts: np.ndarray, label_end: np.ndarray,
          embargo: float = 0.0, *, gap: float = 0.0) -> np.ndarray:
    """``train`` without the rows whose ``[event_ts, label_end]`` meets ``[hull start - gap, hull end + embargo]``,
    the test hull widened by the embargo after it and the ``gap`` before it.

    All times are in one unit (the functions of this module pass float nanoseconds).
    """
    if test.size == 0 or train.size == 0:
        return train
    end = np.where(np.isnan(label_end), np.inf, label_end)
    hull_start, hull_end = event_ts[test].min(), end[test].max()
    start_t, end_t = event_ts[train], end[train]
    overlaps = (start_t <= hull_end + embargo) & (end_t >= hull_start - gap)
    return train[~overlaps]


def walk_forward(event_ts: object, *, initial: int, step: int, test_size: int | None = None,
                 window: Literal["expanding", "rolling"] = "expanding", label_end: object = None,
                 embargo: timedelta | float = 0.0) -> list[Fold]:
    """Walk-forward folds over distinct periods: train on the first ``initial`` periods (``rolling``: the
    ``initial`` periods just before the test), test on the next ``test_size`` (default ``step``), advance
    by ``step``. With ``label_end``, training rows whose label reaches into the test are purged; with an
    ``embargo`` (a timedelta, or nanoseconds), also those whose label ends within it before the test (a
    row without ``label_end`` ends at its ``event_ts``)."""
    if initial < 1 or step < 1 or (test_size is not None and test_size < 1):
        raise TrainingDataError(f"walk_forward: initial, step and test_size must be >= 1, got {initial}, {step}, {test_size}")
    if window not in ("expanding", "rolling"):
        raise TrainingDataError(f"walk_forward: window must be 'expanding' or 'rolling', got {window!r}")
    ts = to_ns(event_ts)
    gap = _embargo_ns(embargo)
    if gap < 0:
        raise TrainingDataError(f"walk_forward: the embargo must not be negative, got {embargo}")
    end = to_ns(label_end) if label_end is not None else ts if gap > 0 else None
    periods, period_of = np.unique(ts, return_inverse=True)
    size = step if test_size is None else test_size
    folds = []
    for test_start in range(initial, periods.size, step):
        first_train = 0 if window == "expanding" else test_start - initial
        train = np.flatnonzero((period_of >= first_train) & (period_of < test_start))
        test = np.flatnonzero((period_of >= test_start) & (period_of < test_start + size))
        if end is not None:
            train = purge(train, test, ts, end, gap, gap=gap)
        folds.append(Fold(train, test))
    return folds


def purged_kfold(event_ts: object, label_end: object, *, n_splits: int = 5,
                 embargo: timedelta | float = timedelta(0)) -> list[Fold]:
    """K contiguous blocks of periods, each the test set once; training rows are the rest, purged by
    their label end and embargoed for ``embargo`` (a timedelta, or nanoseconds) after each test block."""
    ts, end = to_ns(event_ts), to_ns(label_end)
    periods, period_of = np.unique(ts, return_inverse=True)
    if _embargo_ns(embargo) < 0:
        raise TrainingDataError(f"purged_kfold: the embargo must not be negative, got {embargo}")
    if not 2 <= n_splits <= periods.size:
        raise TrainingDataError(f"purged_kfold: n_splits must be between 2 and the {periods.size} distinct event "
                                f"times, got {n_splits}")
    bounds = np.linspace(0, periods.size, n_splits + 1).round().astype(int)
    folds = []
    for lo, hi in itertools.pairwise(bounds):
        test = np.flatnonzero((period_of >= lo) & (period_of < hi))
        train = np.flatnonzero((period_of < lo) | (period_of >= hi))
        folds.append(Fold(purge(train, test, ts, end, _embargo_ns(embargo)), test))
    return folds


def cv_folds(scheme: CvScheme, event_ts: object, label_end: object, *, folds: int,
             embargo: timedelta | float = timedelta(0)) -> list[Fold]:
    """``folds`` test blocks of ``scheme``, purged on ``label_end`` and embargoed: ``walk-forward`` (expanding)
    trains its first fold on the first half of the periods and splits the rest into ``folds`` blocks;
    ``purged-kfold`` makes ``folds`` blocks of all periods (at least 2)."""
    if scheme == "purged-kfold":
        return purged_kfold(event_ts, label_end, n_splits=folds, embargo=embargo)
    if scheme != "walk-forward":
        raise TrainingDataError(f"unknown cross-validation {scheme!r}; use one of {', '.join(CV_SCHEMES)}")
    if folds < 1:
        raise TrainingDataError(f"walk-forward needs at least 1 fold, got {folds}")
    periods = np.unique(to_ns(event_ts)).size
    initial = periods // 2
    return walk_forward(event_ts, initial=initial, step=max(1, math.ceil((periods - initial) / folds)),
                        label_end=label_end, embargo=embargo)
