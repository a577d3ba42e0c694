"""``ewm_mean`` exactly as polars' ``EwmMeanState`` (``ignore_nulls=False``).

The first non-null value sets ``mean = x, weight = 1``; afterwards every row (null or not) decays
``weight *= 1 - alpha``, and a value updates ``mean += (x - mean) * (nvw / (weight + nvw))`` with
``nvw = 1`` if adjust else ``alpha``, then ``weight = weight + 1`` if adjust else ``1``.
State: ``[mean, weight, non_null_count]``.
"""

from __future__ import annotations

from streaming.engine.ops import kernel

__all__ = ["ewm_mean_step", "size"]


def size() -> int:
    return 3


@kernel
def ewm_mean_step(S, off, x, valid, alpha, adjust, min_samples):
    if S[off + 2] == 0.0 and valid:
        S[off], S[off + 1], S[off + 2] = x, 1.0, 1.0
    elif S[off + 2] > 0.0:
        S[off + 1] *= 1.0 - alpha
        if valid:
            new_value_weight = 1.0 if adjust else alpha
            S[off] = S[off] + (x - S[off]) * (new_value_weight / (S[off + 1] + new_value_weight))
            S[off + 1] = S[off + 1] + 1.0 if adjust else 1.0
            S[off + 2] += 1.0
    return S[off], valid and S[off + 2] >= max(min_samples, 1)
