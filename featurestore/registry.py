"""Where feature views come from (built-ins, a user's module) and which versions a store has seen.

The store keeps ``registry/<view>.json``: every version of a view that was ever backfilled, with its
canonical definition, and which version is ``current`` (the one ``features_<view>`` in SQL reads).

>>> import tempfile
>>> from datetime import datetime, timezone
>>> from featurestore.store import Store
>>> store = Store(tempfile.mkdtemp())
>>> view = resolve_view("research")
>>> register_view(store, view, now=datetime(2024, 1, 1, tzinfo=timezone.utc)) == view.version
True
>>> current_version(store, "research") == view.version
True
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import sys
from datetime import datetime
from pathlib import Path

from featurestore.atomic import write_bytes_atomic
from featurestore.builtin_views import BUILTIN_VIEWS
from featurestore.definitions import FeatureView
from featurestore.errors import DefinitionError, FeatureStoreError
from featurestore.expressions import render
from featurestore.store import Store

__all__ = ["available_views", "current_version", "load_definitions", "register_view", "registered", "resolve_view"]


def load_definitions(path: str | Path) -> list[FeatureView]:
    """Every ``FeatureView`` defined at module level in the Python file ``path``."""
    path = Path(path)
    if not path.is_file():
        raise DefinitionError(f"definitions file {path} does not exist")
    spec = importlib.util.spec_from_file_location(f"featurestore_user_definitions_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    except FeatureStoreError:
        raise
    except Exception as exc:
        raise DefinitionError(f"could not import {path}: {type(exc).__name__}: {exc}") from exc
    views = [value for value in vars(module).values() if isinstance(value, FeatureView)]
    if not views:
        raise DefinitionError(f"{path} defines no FeatureView at module level")
    return views


def available_views(definitions: str | Path | None = None) -> dict[str, FeatureView]:
    """Built-in views, overridden or extended by the views of a user's definitions file."""
    views = {view.name: view for view in BUILTIN_VIEWS}
    if definitions is not None:
        views.update({view.name: view for view in load_definitions(definitions)})
    return views


def resolve_view(name: str, definitions: str | Path | None = None) -> FeatureView:
    views = available_views(definitions)
    if name not in views:
        close = difflib.get_close_matches(name, views, n=1)
        raise DefinitionError(f"unknown feature view {name!r}{'; did you mean ' + repr(close[0]) + '?' if close else ''}"
                              f" (available: {', '.join(sorted(views))})")
    return views[name]


def registered(store: Store, name: str) -> dict:
    """The registry entry of a view: ``{"name", "current", "versions": {version: {...}}}`` (empty if none)."""
    path = store.registry_file(name)
    return json.loads(path.read_text()) if path.exists() else {"name": name, "current": None, "versions": {}}


def current_version(store: Store, name: str) -> str | None:
    return registered(store, name)["current"]


def register_view(store: Store, view: FeatureView, *, now: datetime) -> str:
    """Record ``view``'s version (new definitions make a new version) and make it current."""
    entry = registered(store, view.name)
    entry["versions"].setdefault(view.version, {
        "timeframe": view.timeframe,
        "registered_at": now.isoformat(),
        "features": {name: render(node) for name, node in view.nodes.items()},
        "definition": view.definition,
    })
    entry["current"] = view.version
    write_bytes_atomic(json.dumps(entry, indent=1, sort_keys=True).encode(), store.registry_file(view.name))
    return view.version
