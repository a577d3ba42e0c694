"""The project's exception hierarchy: every error a user can cause is a ``FeatureStoreError``.

>>> from featurestore.errors import BarValidationError, FeatureStoreError
>>> issubclass(BarValidationError, FeatureStoreError) and issubclass(FeatureStoreError, ValueError)
True
"""

from __future__ import annotations

__all__ = [
    "AuditLogError",
    "BarValidationError",
    "DamagedFileError",
    "DefinitionError",
    "ExchangeError",
    "FeatureStoreError",
    "FutureFeaturesError",
    "LabelSpecError",
    "LookAheadError",
    "MissingFeaturesError",
    "ModelExportError",
    "ModelRegistryError",
    "NonFiniteFeaturesError",
    "SchemaError",
    "SqlError",
    "StaleFeaturesError",
    "StoreConflictError",
    "TrainingDataError",
    "UnsupportedExpressionError",
    "VersionSkewError",
]


class FeatureStoreError(ValueError):
    """Root of every error caused by input, configuration or stored data (not by a bug)."""


class BarValidationError(FeatureStoreError):
    """A batch of bars broke a rule of the bar contract; the batch is rejected whole."""

    def __init__(self, rule: str, *, symbol: str | None = None, ts: object = None, detail: str = "",
                 source: str | None = None) -> None:
        where = ", ".join(
            part for part in (
                f"source {source}" if source else "",
                f"symbol {symbol}" if symbol else "",
                f"ts {ts}" if ts is not None else "",
            ) if part
        )
        message = f"bar rejected ({where}): rule '{rule}' broken" if where else f"bars rejected: rule '{rule}' broken"
        super().__init__(f"{message}{': ' + detail if detail else ''}")
        self.rule, self.symbol, self.ts, self.source = rule, symbol, ts, source


class StoreConflictError(FeatureStoreError):
    """Incoming bars disagree with bars already stored for the same (symbol, ts)."""


class DamagedFileError(FeatureStoreError):
    """A stored file cannot be read (truncated, overwritten, not parquet); the message names it and the fix."""

    def __init__(self, path: object, reason: str, fix: str) -> None:
        super().__init__(f"damaged file {path}: {reason}; {fix}")
        self.path = path


class ExchangeError(FeatureStoreError):
    """The exchange could not be read (after retries) or answered something unusable."""


class SqlError(FeatureStoreError):
    """A SQL statement failed or was refused (the offline store is read-only through SQL)."""


class DefinitionError(FeatureStoreError):
    """A feature view or feature definition is malformed (bad name, timeframe, type)."""


class UnsupportedExpressionError(DefinitionError):
    """A feature expression uses an operation the project cannot run both offline and incrementally."""


class LookAheadError(DefinitionError):
    """A feature expression would read bars from the future (negative shift, reverse, centred window...)."""


class SchemaError(DefinitionError):
    """A feature expression references a column the source does not have."""


class VersionSkewError(FeatureStoreError):
    """Stored or served features were computed by a different version of the view's definitions."""


class TrainingDataError(FeatureStoreError):
    """An entity file, a training-set export or the data a model is trained on is unusable."""


class LabelSpecError(TrainingDataError):
    """A label spec string (``future_ret:h=1``, ``bucket:h=12,x=0.01``, ...) is malformed."""


class ModelExportError(FeatureStoreError):
    """A model cannot be exported faithfully (ONNX conversion refused or predictions differ)."""


class ModelRegistryError(FeatureStoreError):
    """A model name or version is not in the model registry, or an artifact is missing."""


class MissingFeaturesError(FeatureStoreError):
    """A model needs a feature row (or a non-null value) that the online store does not have."""


class StaleFeaturesError(FeatureStoreError):
    """An online feature row is older than the age a model accepts (by default the view's TTL)."""


class FutureFeaturesError(FeatureStoreError):
    """An online feature row is newer than the moment being scored (a replayed bar scored with later rows)."""


class AuditLogError(FeatureStoreError):
    """A signal audit log that does not verify (edited, cut, reordered) or that another process is writing."""


class NonFiniteFeaturesError(FeatureStoreError):
    """A feature value to be scored is +inf or -inf (a division by zero upstream): refused, never fed to a model."""
