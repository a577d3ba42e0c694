"""``ewm_mean`` exactly as polars' ``EwmMeanState`` (``ignore_nulls=False``).

The first non-null value sets ``mean = x, weight = 1``; afterwards every row (null or not) decays
``weight *= 1 - alpha``, and a value updates ``mean += (x - mean) * (nvw / (weight + nvw))`` with
``nvw = 1`` if adjust else ``alpha``, then ``weight = weight + 1`` if adjust else ``1``. A null row gives
null; a value gives the mean once ``min_samples`` values (at least one) have been seen. ``span``, ``com`` and
``half_life`` are converted to ``alpha`` by polars before the definition is stored.

State: ``[mean, weight, non_null_count]``.

>>> from featurestore.operators import OPERATORS, replay
>>> replay(OPERATORS["ewm_mean"], [1.0, 3.0, None, 3.0], alpha=0.5, adjust=False, min_samples=1)
[1.0, 2.0, None, 2.6666666666666665]
>>> replay(OPERATORS["ewm_mean"], [1.0, 3.0], alpha=0.5, adjust=True, min_samples=1)
[1.0, 2.333333333333333]
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from featurestore.errors import DefinitionError, UnsupportedExpressionError
from featurestore.operators.base import Operator, float_math, kernel

__all__ = ["OPERATORS", "ewm_mean_step"]


def _size(params: Mapping[str, Any]) -> int:
    return 3


def _parse(options: Mapping[str, Any]) -> dict[str, Any]:
    settings = options["options"]
    if settings["ignore_nulls"]:
        raise UnsupportedExpressionError("unsupported operation ewm_mean(ignore_nulls=True) in a feature expression; "
                                         "the default ignore_nulls=False is supported")
    alpha = settings["alpha"]
    if not isinstance(alpha, float) or not math.isfinite(alpha) or not 0 < alpha <= 1:
        raise UnsupportedExpressionError(f"ewm_mean needs 0 < alpha <= 1, got {alpha}")
    if not isinstance(settings["min_periods"], int) or settings["min_periods"] < 0:
        raise DefinitionError(f"ewm_mean needs min_samples >= 0, got {settings['min_periods']!r}")
    return {"alpha": alpha, "adjust": settings["adjust"], "min_samples": settings["min_periods"]}


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


OPERATORS = (
    Operator("ewm_mean", ("EwmMean",), float_math, params=("alpha", "adjust", "min_samples"), parse=_parse,
             size=_size, step=ewm_mean_step,
             write=lambda x, alpha, adjust, min_samples: x.ewm_mean(alpha=alpha, adjust=adjust,
                                                                    min_samples=min_samples)),
)
