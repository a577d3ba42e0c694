"""Walk-forward and purged k-fold: coverage, ordering, purge by each label's real end, embargo (both schemes)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from featurestore.errors import TrainingDataError
from training.splits import cv_folds, purged_kfold, to_ns, walk_forward


@st.composite
def labelled_rows(draw):
    """Rows of 1-3 symbols on a minute grid (several rows may share a time), each with a label lasting
    1..h minutes (triple-barrier-like: ends vary)."""
    n = draw(st.integers(10, 60))
    minutes = np.sort(np.array(draw(st.lists(st.integers(0, 80), min_size=n, max_size=n))))
    lengths = np.array(draw(st.lists(st.integers(1, 10), min_size=n, max_size=n)))
    order = draw(st.permutations(range(n)))  # input order must not matter
    start = (minutes * 60e9)[list(order)]
    return start, start + lengths[list(order)] * 60e9


def overlaps(a_start, a_end, b_start, b_end) -> bool:
    return a_start <= b_end and b_start <= a_end


@given(rows=labelled_rows(), n_splits=st.integers(2, 5), embargo_min=st.integers(0, 5))
@settings(max_examples=80, deadline=None)
def test_purged_kfold_never_trains_on_a_window_touching_a_test_window(rows, n_splits, embargo_min):
    start, end = rows
    assume(np.unique(start).size >= n_splits)  # k folds need k distinct times
    embargo = timedelta(minutes=embargo_min)
    folds = purged_kfold(start, end, n_splits=n_splits, embargo=embargo)
    assert len(folds) == n_splits
    assert sorted(np.concatenate([f.test for f in folds]).tolist()) == list(range(start.size))  # a partition
    for fold in folds:
        assert not set(fold.train) & set(fold.test)
        test_end = end[fold.test].max()
        for i in fold.train:
            for j in fold.test:
                assert not overlaps(start[i], end[i], start[j], end[j]), (i, j)
            # embargo: nothing may start within `embargo` after the test rows' last label end
            assert not test_end < start[i] <= test_end + embargo.total_seconds() * 1e9
        # rows sharing a time with a test row are never in training
        assert not set(start[fold.train]) & set(start[fold.test])


def test_purge_uses_the_actual_label_end():
    minute = 60e9
    start = np.arange(10) * minute
    short = start + minute
    long_ = short.copy()
    long_[2] = start[2] + 6 * minute  # one label reaching 6 minutes ahead, into the second fold's test block
    fold_short = purged_kfold(start, short, n_splits=2)[1]
    fold_long = purged_kfold(start, long_, n_splits=2)[1]
    assert 2 in fold_short.train.tolist() and 2 not in fold_long.train.tolist()


def test_embargo_drops_rows_after_the_test_block():
    minute = 60e9
    start = np.arange(20) * minute
    folds = purged_kfold(start, start + minute, n_splits=4, embargo=timedelta(minutes=3))
    first = folds[0]  # test rows 0..4, label ends 5 min: rows starting at 5 (overlap) and 6..8 (embargo) are out
    assert first.test.tolist() == [0, 1, 2, 3, 4]
    assert first.train.tolist() == list(range(9, 20))


@given(rows=labelled_rows(), scheme=st.sampled_from(["walk-forward", "purged-kfold"]), folds=st.integers(2, 5),
       embargo_min=st.integers(0, 8))
@settings(max_examples=120, deadline=None)
def test_no_training_label_window_meets_a_test_block_or_its_embargo(rows, scheme, folds, embargo_min):
    """What ``train --cv`` uses, for both schemes: each training row's [event_ts, label end] stays clear of its
    fold's test block widened by the embargo after it (walk-forward, which trains only on the past: and before
    it); and only such rows are dropped, nothing else."""
    start, end = rows
    assume(np.unique(start).size >= folds)
    embargo = embargo_min * 60e9
    splits = cv_folds(scheme, start, end, folds=folds, embargo=timedelta(minutes=embargo_min))
    assert splits
    for fold in splits:
        zone_start = start[fold.test].min() - (embargo if scheme == "walk-forward" else 0.0)
        zone_end = end[fold.test].max() + embargo
        for i in fold.train:
            assert not overlaps(start[i], end[i], zone_start, zone_end), (i, scheme)
        if scheme == "walk-forward":
            candidates = np.flatnonzero(start < start[fold.test].min())
        else:
            candidates = np.setdiff1d(np.arange(start.size), fold.test)
        for i in np.setdiff1d(candidates, fold.train):
            assert overlaps(start[i], end[i], zone_start, zone_end), (i, scheme)  # dropped for a reason


def test_walk_forward_embargo_keeps_a_gap_before_each_test_block():
    minute = 60e9
    start = np.arange(12) * minute
    plain = walk_forward(start, initial=6, step=3, label_end=start + minute)
    gapped = walk_forward(start, initial=6, step=3, label_end=start + minute, embargo=timedelta(minutes=2))
    assert [f.train.tolist() for f in plain] == [[0, 1, 2, 3, 4], [0, 1, 2, 3, 4, 5, 6, 7]]
    # rows 3 and 4 end at minutes 4 and 5, within 2 minutes of the test starting at minute 6 (touching counts)
    assert [f.train.tolist() for f in gapped] == [[0, 1, 2], [0, 1, 2, 3, 4, 5]]
    assert [f.test.tolist() for f in gapped] == [f.test.tolist() for f in plain]


@given(rows=labelled_rows(), initial=st.integers(1, 10), step=st.integers(1, 10),
       window=st.sampled_from(["expanding", "rolling"]))
@settings(max_examples=80, deadline=None)
def test_walk_forward_trains_only_on_the_past_and_purges(rows, initial, step, window):
    start, end = rows
    periods = np.unique(start)
    folds = walk_forward(start, initial=initial, step=step, window=window, label_end=end)
    assert len(folds) == len(range(initial, periods.size, step))
    seen_tests = []
    for k, fold in enumerate(folds):
        test_periods = np.unique(start[fold.test])
        assert test_periods.tolist() == periods[initial + k * step: initial + k * step + step].tolist()
        assert start[fold.train].max(initial=-np.inf) < test_periods.min()
        assert (end[fold.train] < test_periods.min()).all()  # purged: no label reaches the test block
        if window == "rolling":
            assert np.unique(start[fold.train]).size <= initial
            assert start[fold.train].min(initial=np.inf) >= periods[initial + k * step - initial]
        seen_tests.extend(fold.test.tolist())
    assert len(seen_tests) == len(set(seen_tests))


def test_walk_forward_expanding_and_rolling_sizes():
    ts = np.arange(10)
    expanding = walk_forward(ts, initial=4, step=2)
    rolling = walk_forward(ts, initial=4, step=2, window="rolling")
    assert [f.train.tolist() for f in expanding] == [[0, 1, 2, 3], [0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4, 5, 6, 7]]
    assert [f.train.tolist() for f in rolling] == [[0, 1, 2, 3], [2, 3, 4, 5], [4, 5, 6, 7]]
    assert [f.test.tolist() for f in rolling] == [[4, 5], [6, 7], [8, 9]]
    assert [f.test.tolist() for f in walk_forward(ts, initial=4, step=3, test_size=1)] == [[4], [7]]


def test_rows_of_several_symbols_at_one_time_stay_together():
    t = [datetime(2024, 1, 1, tzinfo=UTC) + timedelta(hours=h) for h in (0, 0, 1, 1, 2, 2, 3, 3)]
    ts = np.array([np.datetime64(x.replace(tzinfo=None), "us") for x in t])
    folds = walk_forward(ts, initial=2, step=1)
    assert [f.test.tolist() for f in folds] == [[4, 5], [6, 7]]
    assert to_ns(ts)[0] == 1704067200e9


@pytest.mark.parametrize(("call", "message"), [
    (lambda: walk_forward(np.arange(5), initial=0, step=1), "must be >= 1"),
    (lambda: walk_forward(np.arange(5), initial=1, step=1, window="sliding"), "'expanding' or 'rolling'"),
    (lambda: purged_kfold(np.arange(3), np.arange(3), n_splits=4), "n_splits must be between 2 and the 3"),
    (lambda: purged_kfold(np.arange(3), np.arange(3), n_splits=2, embargo=-1), "embargo must not be negative"),
    (lambda: walk_forward(np.arange(5), initial=1, step=1, embargo=timedelta(minutes=-1)), "must not be negative"),
    (lambda: cv_folds("kfold", np.arange(5), np.arange(5), folds=2), "unknown cross-validation 'kfold'"),
])
def test_bad_split_arguments(call, message):
    with pytest.raises(TrainingDataError, match=message):
        call()
