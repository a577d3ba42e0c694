"""Reference distributions and drift against them: the PSI and KS contracts stated in ``training.reference``."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import ks_2samp

from training.reference import Distribution, drift

values = st.lists(st.one_of(st.floats(-1e6, 1e6), st.sampled_from([0.0, 1.0, -2.5])), min_size=1, max_size=400)


@settings(max_examples=150, deadline=None)
@given(values, values)
def test_ks_is_the_two_sample_statistic_or_at_most_one_percentile_below_it(reference, new):
    got = drift(Distribution.of(np.array(reference)), np.array(new)).ks
    exact = ks_2samp(reference, new).statistic
    assert got <= exact + 1e-12
    assert exact <= got + 0.01 + 2.0 / len(reference) + 1e-12


@settings(max_examples=100, deadline=None)
@given(values)
def test_the_reference_data_itself_has_no_drift_and_a_psi_never_below_zero(data):
    reference = Distribution.of(np.array(data))
    same = drift(reference, np.array(data))
    assert same.ks == 0.0 and abs(same.psi) < 1e-12
    assert abs(sum(reference.shares) - 1.0) < 1e-9 and reference.cdf[-1] == 1.0
    assert drift(reference, np.array([*data[::-1], max(data) + 1.0])).psi >= 0.0


def test_nulls_and_infinities_are_rates_beside_the_finite_distribution():
    reference = Distribution.of(np.array([1.0, 2.0, np.nan, np.inf, 3.0, 4.0, np.nan, 5.0]))
    assert (reference.rows, reference.null_rate, reference.nonfinite_rate, reference.mean) == (8, 0.25, 0.125, 3.0)
    shifted = drift(reference, np.array([np.nan, np.nan, np.nan, 10.0]))
    assert (shifted.null_rate, shifted.reference_null_rate, shifted.ks, shifted.mean) == (0.75, 0.25, 1.0, 10.0)
    assert shifted.psi > 1.0
    nothing = drift(reference, np.array([np.nan]))
    assert (nothing.psi, nothing.ks, nothing.null_rate) == (None, None, 1.0)
    empty = Distribution.of(np.array([np.nan, np.nan]))
    assert (empty.null_rate, empty.points, drift(empty, np.array([1.0])).psi) == (1.0, (), None)
