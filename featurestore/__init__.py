"""featurestore: causal features written once as polars expressions, served offline and online.

The package is the foundation layer (bars, the store, definitions, offline and online stores, the registry,
point-in-time export). Its front door for notebooks is ``FeatureStore`` (``app.sdk``), one object with a
method for every verb of the command line:

>>> from featurestore import FeatureStore
>>> FeatureStore.__module__
'app.sdk'
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from app.sdk import FeatureStore

__all__ = ["FeatureStore"]


def __getattr__(name: str) -> Any:
    # The SDK composes every layer, so it lives in the composition root (app); it is re-exported here, on
    # first use, for `from featurestore import FeatureStore`. pyproject.toml's layers contract lists this
    # one import as its only exception: no module of the foundation calls the SDK.
    if name == "FeatureStore":
        from app.sdk import FeatureStore

        return FeatureStore
    raise AttributeError(f"module 'featurestore' has no attribute {name!r}")
