"""Reference distributions: what a model's inputs and predictions looked like on its training set, and drift
against them.

``Distribution.of(values)`` summarises one column: rows, the null rate (null or NaN: what the model is fed as
NaN), the non-finite rate (+-inf), mean and standard deviation of the finite values, the PSI bins (the
distinct deciles as interior edges, each bin's share of the finite values) and the CDF at the distinct
percentiles 0, 1, ..., 100 (and just below each). ``training.train`` writes one per input and one for the predictions, with the
out-of-sample signal figures live signals are compared with (``training.evaluation.signal_figures``), as
``reference.json`` beside ``meta.json`` (``ModelReference``; ``ModelMeta.reference`` points to it).

Drift of new values against a reference (``drift``):

- **PSI** (population stability index) over the reference's bins: ``sum((a - e) * ln(a / e))`` with the
  shares ``e`` (reference) and ``a`` (new), each floored at 1e-4 so an empty bin counts, not explodes.
  Rules of thumb: below 0.1 stable, 0.1 to 0.25 a shift, above 0.25 a different population.
- **KS**: ``max |F_ref(x) - F_new(x)|`` at the reference's percentile points and just below each of them
  (so an atom of the reference, or a gap in it, is measured on both sides), never above the two-sample
  Kolmogorov-Smirnov statistic and at most the reference's mass strictly between two points (about 0.01)
  below it.

Both are computed over finite values; nulls and infinities are compared as rates.

>>> rng = np.random.default_rng(0)
>>> reference = Distribution.of(rng.normal(size=20_000))
>>> len(reference.shares), reference.null_rate
(10, 0.0)
>>> same, shifted = drift(reference, rng.normal(size=5_000)), drift(reference, rng.normal(1.0, 2.0, size=5_000))
>>> same.psi < 0.01 and same.ks < 0.03, shifted.psi > 0.5 and shifted.ks > 0.3
(True, True)
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from featurestore.atomic import write_bytes_atomic
from featurestore.errors import ModelRegistryError
from training.codec import decode, encode

__all__ = ["REFERENCE_FILE", "Distribution", "Drift", "ModelReference", "SideFigures", "SignalFigures", "drift",
           "read_reference"]

REFERENCE_FILE = "reference.json"
PSI_FLOOR = 1e-4
_DECILES = np.linspace(0.1, 0.9, 9)
_PERCENTILES = np.linspace(0.0, 1.0, 101)


def _finite(values: np.ndarray) -> tuple[np.ndarray, int, int, int]:
    """(sorted finite values, rows, nulls (NaN), infinities)."""
    values = np.asarray(values, dtype=np.float64)
    nan = np.isnan(values)
    inf = np.isinf(values)
    return np.sort(values[~nan & ~inf]), values.size, int(nan.sum()), int(inf.sum())


def _none(value: float) -> float | None:
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class Distribution:
    """One column's distribution (see the module docstring); ``shares`` has ``len(edges) + 1`` bins:
    ``(-inf, e0], (e0, e1], ..., (e_last, inf)``."""

    rows: int
    null_rate: float
    nonfinite_rate: float
    mean: float | None
    std: float | None
    edges: tuple[float, ...]
    shares: tuple[float, ...]
    points: tuple[float, ...]
    cdf: tuple[float, ...]  # F_ref at each point
    cdf_below: tuple[float, ...]  # F_ref just below each point (an atom's mass is cdf - cdf_below)

    @classmethod
    def of(cls, values: np.ndarray) -> Distribution:
        """The distribution of ``values`` (NaN is null)."""
        finite, rows, nulls, infinite = _finite(values)
        if not finite.size:
            return cls(rows, nulls / rows if rows else 0.0, infinite / rows if rows else 0.0, None, None, (), (1.0,),
                       (), (), ())
        edges = np.unique(np.quantile(finite, _DECILES))
        points = np.unique(np.quantile(finite, _PERCENTILES))
        return cls(rows, nulls / rows, infinite / rows, float(finite.mean()), _none(float(finite.std())),
                   tuple(edges.tolist()), tuple(_shares(finite, edges).tolist()), tuple(points.tolist()),
                   tuple((np.searchsorted(finite, points, side="right") / finite.size).tolist()),
                   tuple((np.searchsorted(finite, points, side="left") / finite.size).tolist()))


def _shares(finite: np.ndarray, edges: np.ndarray) -> np.ndarray:
    counts = np.bincount(np.searchsorted(edges, finite, side="left"), minlength=edges.size + 1)
    return counts / finite.size


@dataclass(frozen=True)
class Drift:
    """New values against a ``Distribution``: PSI and KS over finite values (None when there are none), and
    the rates beside the reference's."""

    rows: int
    psi: float | None
    ks: float | None
    null_rate: float
    reference_null_rate: float
    nonfinite_rate: float
    reference_nonfinite_rate: float
    mean: float | None
    reference_mean: float | None


def drift(reference: Distribution, values: np.ndarray) -> Drift:
    """How ``values`` (NaN is null) differ from ``reference``."""
    finite, rows, nulls, infinite = _finite(values)
    psi = ks = mean = None
    if finite.size and reference.points:
        expected = np.maximum(np.asarray(reference.shares), PSI_FLOOR)
        actual = np.maximum(_shares(finite, np.asarray(reference.edges)), PSI_FLOOR)
        psi = float(((actual - expected) * np.log(actual / expected)).sum())
        live_cdf = np.searchsorted(finite, np.asarray(reference.points), side="right") / finite.size
        live_below = np.searchsorted(finite, np.asarray(reference.points), side="left") / finite.size
        ks = float(max(np.abs(live_cdf - np.asarray(reference.cdf)).max(),
                       np.abs(live_below - np.asarray(reference.cdf_below)).max()))
        mean = float(finite.mean())
    return Drift(rows, psi, ks, nulls / rows if rows else 0.0, reference.null_rate,
                 infinite / rows if rows else 0.0, reference.nonfinite_rate, mean, reference.mean)


@dataclass(frozen=True)
class SideFigures:
    """Bars held on one side: how many, the mean net simple return per bar (costs included), and the share
    of them that earned more than nothing before costs."""

    bars: int
    mean_return: float | None
    hit_rate: float | None


@dataclass(frozen=True)
class SignalFigures:
    """Scores against what happened: Spearman IC of score and label return, hit rate (sign of score equals
    sign of label return, both non-zero) and the figures of each side held (``LONG``, ``SHORT``) at
    ``cost_bps`` per side."""

    rows: int
    cost_bps: float
    ic: float | None
    hit_rate: float | None
    sides: dict[str, SideFigures]


@dataclass(frozen=True)
class ModelReference:
    """``reference.json``: the training set's distributions and the backtest's signal figures."""

    rows: int
    features: dict[str, Distribution]  # model input name ("view__feature") -> distribution
    prediction: Distribution  # the published model's scores on the training set
    backtest: SignalFigures | None  # out-of-sample, at the model's threshold and costs

    def to_json(self) -> str:
        return json.dumps(encode(self), allow_nan=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str, *, where: str = REFERENCE_FILE) -> ModelReference:
        try:
            return decode(cls, json.loads(text), "", error=ModelRegistryError, schema="reference.json")
        except ValueError as exc:
            raise ModelRegistryError(f"{where}: {exc}") from None

    def write(self, directory: str | Path) -> str:
        """``<directory>/reference.json``, replaced atomically; returns its sha256 (``ModelMeta.reference``)."""
        data = self.to_json().encode()
        write_bytes_atomic(data, Path(directory) / REFERENCE_FILE)
        return hashlib.sha256(data).hexdigest()


def read_reference(path: str | Path, sha256: str) -> ModelReference:
    """The reference file at ``path``, refused when it is not the file ``meta.json`` recorded."""
    path = Path(path)
    if not path.is_file():
        raise ModelRegistryError(f"{path} does not exist, but meta.json says the model has one")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != sha256:
        raise ModelRegistryError(f"{path} is not the reference meta.json recorded (sha256 differs): the model "
                                 f"directory was changed after publishing")
    return ModelReference.from_json(data.decode(), where=str(path))
