"""The store's registry: every feature view it was given, every version of it, rebuilt by name without the user's file.

``registry/<view>.json`` keeps, per version, the canonical definition (whose hash is the version), the
expressions serialized by polars (binary: exact, floats included), the timeframe, where the definition
came from (``source``: a module path or ``builtin:<template>``), when it was registered and when it was
last backfilled, and which version is ``current`` (the one a name resolves to).

- ``apply_views`` (``featurestore apply``) registers views all or nothing: it checks every view first and
  refuses a view whose name is registered from another module with another definition. Re-applying a
  changed definition from the same module (or redefining a built-in view's name) registers a new version,
  reported with what changed.
- ``resolve_view`` finds a view by name (``name@version`` for an older version): a definitions file given
  with ``--definitions`` is applied first (an implicit apply), then the registry, then the built-ins.
- ``register_view`` (the backfill) records a version and makes it current (with when it was first backfilled).

>>> import tempfile
>>> from datetime import datetime, timezone
>>> from featurestore.store import Store
>>> store = Store(tempfile.mkdtemp())
>>> now = datetime(2024, 1, 1, tzinfo=timezone.utc)
>>> view = FeatureView("mom", "1h", {"ret_1": (pl.col("close") / pl.col("close").shift(1)).log()})
>>> [(c.name, c.action) for c in apply_views(store, [view], now=now, source="my_views.py")]
[('mom', 'registered')]
>>> resolve_view(store, "mom").version == view.version
True
>>> changed = FeatureView("mom", "1h", {"ret_2": (pl.col("close") / pl.col("close").shift(2)).log()})
>>> [(c.action, c.detail) for c in apply_views(store, [changed], now=now, source="my_views.py")]
[('new version', 'features added: ret_2; removed: ret_1')]
>>> resolve_view(store, f"mom@{view.version}").feature_names
['ret_1']
"""

from __future__ import annotations

import base64
import difflib
import importlib.util
import io
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl

from featurestore.atomic import write_bytes_atomic
from featurestore.builtin_views import BUILTIN_VIEWS
from featurestore.definitions import FeatureView
from featurestore.errors import DefinitionError, FeatureStoreError
from featurestore.expressions import render
from featurestore.store import Store

__all__ = [
    "AppliedView",
    "apply_views",
    "current_version",
    "load_definitions",
    "register_view",
    "registered",
    "registered_views",
    "resolve_view",
    "sql_version",
]


def load_definitions(path: str | Path) -> list[FeatureView]:
    """Every ``FeatureView`` defined at module level in the Python file ``path``."""
    path = Path(path)
    if not path.is_file():
        raise DefinitionError(f"definitions file {path} does not exist")
    if path.suffix != ".py":
        raise DefinitionError(f"definitions file {path} is not a Python module (.py) defining FeatureView objects")
    spec = importlib.util.spec_from_file_location(f"featurestore_user_definitions_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    except FeatureStoreError as exc:
        raise type(exc)(f"{path}: {exc}") from None
    except Exception as exc:
        raise DefinitionError(f"could not import {path}: {type(exc).__name__}: {exc}") from exc
    # built-in views the module merely imports (to build on them) are not its definitions
    views = [value for value in vars(module).values()
             if isinstance(value, FeatureView) and not any(value is builtin for builtin in BUILTIN_VIEWS)]
    if not views:
        raise DefinitionError(f"{path} defines no FeatureView at module level")
    by_name: dict[str, FeatureView] = {}
    for view in views:
        if by_name.setdefault(view.name, view).version != view.version:
            raise DefinitionError(f"{path} defines view {view.name!r} twice, with different definitions")
    return list(by_name.values())


def registered(store: Store, name: str) -> dict[str, Any]:
    """The registry entry of a view: ``{"name", "current", "versions": {version: {...}}}`` (empty if none)."""
    path = store.registry_file(name)
    if not path.exists():
        return {"name": name, "current": None, "versions": {}}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise FeatureStoreError(f"registry entry {path} cannot be read ({exc}); re-apply the view's definitions "
                                f"(featurestore apply FILE) to rewrite it") from None


def current_version(store: Store, name: str) -> str | None:
    return registered(store, name)["current"]


def sql_version(store: Store, name: str) -> str | None:
    """The version ``features_<name>`` reads in SQL: the current one if it is backfilled, else the version
    backfilled last (so applying a new definition does not hide the stored rows until its backfill)."""
    entry, stored = registered(store, name), set(store.stored_versions(name))
    if entry["current"] in stored:
        return entry["current"]
    backfilled = [(info.get("backfilled_at") or info["registered_at"], version)
                  for version, info in entry["versions"].items() if version in stored]
    return max(backfilled)[1] if backfilled else None


def _expressions(view: FeatureView) -> list[list[str]]:
    """[[feature, base64 of polars' binary serialization], ...] in the view's feature order (a JSON object's keys
    are sorted when written, and the order of features is the order of a model's inputs)."""
    return [[name, base64.b64encode(expr.meta.serialize(format="binary")).decode()]
            for name, expr in view.features.items()]


def _record(view: FeatureView, *, now: datetime, source: str) -> dict[str, Any]:
    return {
        "timeframe": view.timeframe,
        "description": view.description,
        "registered_at": now.isoformat(),
        "source": source,
        "polars": pl.__version__,
        "features": {name: render(node) for name, node in view.nodes.items()},
        "definition": view.definition,
        "expressions": _expressions(view),
    }


def _write(store: Store, entry: dict[str, Any]) -> None:
    write_bytes_atomic(json.dumps(entry, indent=1, sort_keys=True).encode(), store.registry_file(entry["name"]))


def register_view(store: Store, view: FeatureView, *, now: datetime, source: str | None = None,
                  backfilled: bool = True) -> str:
    """Record ``view``'s version (new definitions make a new version) and make it current; the backfill
    also stamps ``backfilled_at``."""
    entry = registered(store, view.name)
    source = source or _builtin_source(view) or "python"
    record = dict(entry["versions"].get(view.version) or _record(view, now=now, source=source))
    if "expressions" not in record:  # a version registered before the registry kept expressions
        record.update(expressions=_expressions(view), polars=pl.__version__, source=record.get("source", source))
    if backfilled:
        record.setdefault("backfilled_at", now.isoformat())
    updated = {**entry, "versions": {**entry["versions"], view.version: record}, "current": view.version}
    if updated != entry:  # a re-run leaves the file as it was
        _write(store, updated)
    return view.version


def _builtin_source(view: FeatureView) -> str | None:
    return next((f"builtin:{b.name}" for b in BUILTIN_VIEWS if b.version == view.version), None)


def _rebuild(name: str, version: str, record: dict[str, Any]) -> FeatureView:
    try:
        features = {feature: pl.Expr.deserialize(io.BytesIO(base64.b64decode(data)), format="binary")
                    for feature, data in record["expressions"]}
    except Exception as exc:  # a registry written by another polars
        raise DefinitionError(
            f"view {name!r} version {version} was registered with polars {record.get('polars', '?')} and cannot be "
            f"read back by polars {pl.__version__} ({type(exc).__name__}); re-apply its definitions") from None
    view = FeatureView(name, record["timeframe"], features, description=record.get("description", ""))
    if view.version != version:
        raise DefinitionError(f"view {name!r}: the registered expressions rebuild version {view.version}, not "
                              f"{version}; re-apply its definitions")
    return view


def _view_at(store: Store, name: str, version: str | None) -> FeatureView | None:
    """Version ``version`` (default: current) of a registered view, or None when the registry lacks it."""
    entry = registered(store, name)
    version = version or entry["current"]
    record = entry["versions"].get(version) if version else None
    if record is None:
        return None
    if "expressions" in record:
        return _rebuild(name, version, record)
    return next((v for v in BUILTIN_VIEWS if v.name == name and v.version == version), None)


def registered_views(store: Store) -> dict[str, FeatureView]:
    """The current version of every view in the store's registry, by name."""
    names = sorted(path.stem for path in store.registry_file("x").parent.glob("*.json"))
    views = {name: _view_at(store, name, None) for name in names}
    return {name: view for name, view in views.items() if view is not None}


@dataclass(frozen=True)
class AppliedView:
    """What ``apply_views`` did with one view: ``registered`` (new name), ``new version``, ``unchanged``."""

    name: str
    version: str
    action: str
    detail: str = ""


def _changes(old: FeatureView, new: FeatureView) -> str:
    added = [f for f in new.features if f not in old.features]
    removed = [f for f in old.features if f not in new.features]
    changed = [f for f in new.features if f in old.definition["features"]
               and old.definition["features"][f] != new.definition["features"][f]]
    parts = [f"{what}: {', '.join(names)}" for what, names in
             (("features added", added), ("removed", removed), ("changed", changed)) if names]
    if old.timeframe != new.timeframe:
        parts.insert(0, f"timeframe {old.timeframe} -> {new.timeframe}")
    return "; ".join(parts) or "definition changed"


def apply_views(store: Store, views: Sequence[FeatureView], *, now: datetime, source: str) -> list[AppliedView]:
    """Register ``views`` from ``source`` all or nothing; the applied version of each becomes current."""
    problems, plan = [], []
    for view in views:
        entry = registered(store, view.name)
        current = _view_at(store, view.name, None) if entry["current"] else None
        origin = entry["versions"].get(entry["current"], {}).get("source") if entry["current"] else None
        if current is None:
            plan.append((view, AppliedView(view.name, view.version, "registered")))
        elif current.version == view.version:
            plan.append((view, AppliedView(view.name, view.version, "unchanged")))
        elif origin not in (source, None, "python") and not origin.startswith("builtin:"):
            problems.append(f"view {view.name!r} is registered from {origin} (version {current.version}) with another "
                            f"definition than {source}'s ({_changes(current, view)}); rename one of them")
        else:
            plan.append((view, AppliedView(view.name, view.version, "new version", _changes(current, view))))
    if problems:
        raise DefinitionError("nothing applied: " + "; ".join(problems))
    for view, _ in plan:
        entry = registered(store, view.name)
        entry["versions"].setdefault(view.version, _record(view, now=now, source=source))
        entry["current"] = view.version
        _write(store, entry)
    return [applied for _, applied in plan]


def resolve_view(store: Store, name: str, definitions: str | Path | None = None, *, now: datetime | None = None
                 ) -> FeatureView:
    """The view called ``name`` (``name@version`` for a registered older version).

    With ``definitions``, that module's views are applied to the store first (when ``now`` is given) or
    taken as they are; then the registry; then the built-in views.
    """
    base, _, version = name.partition("@")
    if definitions is not None:
        loaded = load_definitions(definitions)
        if now is not None:
            apply_views(store, loaded, now=now, source=str(Path(definitions)))
        elif not version and (found := next((v for v in loaded if v.name == base), None)):
            return found
    view = _view_at(store, base, version or None)
    if view is not None:
        return view
    if version:
        known = ", ".join(registered(store, base)["versions"]) or "none"
        raise DefinitionError(f"view {base!r} has no registered version {version!r} (registered: {known})")
    builtin = next((v for v in BUILTIN_VIEWS if v.name == base), None)
    if builtin is not None:
        return builtin
    names = sorted({*registered_views(store), *(v.name for v in BUILTIN_VIEWS)})
    close = difflib.get_close_matches(base, names, n=1)
    raise DefinitionError(f"unknown feature view {base!r}{'; did you mean ' + repr(close[0]) + '?' if close else ''}"
                          f" (available: {', '.join(names)}; register your own with `featurestore apply my_views.py`)")
