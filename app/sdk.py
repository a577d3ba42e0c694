"""The Python SDK: one object for one store, with a method for every verb of the command line.

``FeatureStore(path)`` knows the store's settings (``featurestore.toml``) and its registry, so views are
found by name and the online store by the configured URL. Every ``featurestore`` command is a thin call
into these methods: the command line and a notebook take the same code path.

>>> import tempfile
>>> from datetime import datetime, timezone
>>> clock = lambda: datetime(2024, 3, 1, tzinfo=timezone.utc)
>>> fs = FeatureStore.init(tempfile.mkdtemp(), timeframe="1h", clock=clock)
>>> fs.ingest(symbols=["BTC/USDT"], since=datetime(2024, 1, 1, tzinfo=timezone.utc))
{'BTC/USDT': 1440}
>>> import polars as pl
>>> from featurestore.definitions import FeatureView
>>> momentum = FeatureView("momentum", "1h", {"ret_1": (pl.col("close") / pl.col("close").shift(1)).log()})
>>> [(c.name, c.action) for c in fs.apply([momentum])]
[('momentum', 'registered')]
>>> fs.backfill("momentum")[0].rows_written
{'BTC/USDT': 1440}
>>> fs.sql("SELECT count(*) AS n FROM features_momentum")["n"].item()
1440
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl

from featurestore.backfill import BackfillReport, backfill
from featurestore.config import StoreConfig, with_overrides, write_config
from featurestore.definitions import FeatureView
from featurestore.errors import DefinitionError, FeatureStoreError
from featurestore.offline import stored_range
from featurestore.registry import (
    AppliedView,
    apply_views,
    load_definitions,
    registered,
    registered_views,
    resolve_view,
)
from featurestore.store import Store, default_store_root
from featurestore.validate import StoreReport, validate_store

__all__ = ["FeatureStore", "ViewStatus"]

Clock = Callable[[], datetime]


def _wall_clock() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class ViewStatus:
    """One registered (or built-in) view as ``featurestore features list`` shows it."""

    view: FeatureView
    source: str
    registered: bool
    rows: int
    first: datetime | None
    last: datetime | None
    age: timedelta | None  # now - last stored row

    @property
    def fresh(self) -> bool | None:
        """Whether the newest stored row is at most one bar old (None: nothing stored)."""
        from featurestore.timeframes import timeframe_ms

        return None if self.age is None else self.age <= timedelta(milliseconds=2 * timeframe_ms(self.view.timeframe))


class FeatureStore:
    """A feature store directory: ``FeatureStore("store")``, else ``$FEATURESTORE_HOME``, else ``./store``.

    ``clock`` returns the current time (UTC); tests and replays pass their own.
    """

    def __init__(self, path: str | Path | None = None, *, clock: Clock = _wall_clock) -> None:
        self.store = Store(default_store_root(path))
        self.clock = clock

    def __repr__(self) -> str:
        return f"FeatureStore({str(self.store.root)!r})"

    @property
    def root(self) -> Path:
        return self.store.root

    @property
    def config(self) -> StoreConfig:
        return self.store.config

    # -- the store itself

    @classmethod
    def init(cls, path: str | Path | None = None, *, exchange: str | None = None, timeframe: str | None = None,
             online_store: str | None = None, definitions: Sequence[str] | None = None,
             clock: Clock = _wall_clock) -> FeatureStore:
        """Create (or update) the store's ``featurestore.toml``; settings not given keep their value."""
        fs = cls(path, clock=clock)
        config = with_overrides(fs.store.config, exchange=exchange, timeframe=timeframe, online_store=online_store,
                                definitions=tuple(definitions) if definitions is not None else None)
        fs.store.root.mkdir(parents=True, exist_ok=True)
        write_config(fs.store.root, config)
        fs.store.__dict__.pop("config", None)  # read the new file next time
        return fs

    def ingest(self, source: str = "synthetic", *, symbols: Sequence[str] | None = None,
               timeframe: str | None = None, since: datetime | None = None, until: datetime | None = None,
               exchange: str | None = None, seed: int = 7, path: str | Path | None = None,
               from_timeframe: str = "1m") -> dict[str, int]:
        """Bring bars in from ``synthetic`` (default), ``ccxt``, ``csv`` (``path``, one symbol) or
        ``resample`` (``from_timeframe`` bars already stored); return new bars per symbol."""
        from featurestore import ingest

        now, timeframe = self.clock(), timeframe or self.config.timeframe
        since = since or datetime(2024, 1, 1, tzinfo=UTC)
        if source == "synthetic":
            return ingest.ingest_synthetic(self.store, list(symbols or ["BTC/USDT"]), timeframe, since=since,
                                           until=until, now=now, seed=seed)
        if source == "resample":
            return ingest.ingest_resampled(self.store, exchange=exchange or self.config.exchange or "synthetic",
                                           from_timeframe=from_timeframe, timeframe=timeframe, now=now,
                                           symbols=list(symbols) if symbols else None)
        if source == "csv":
            if path is None or not symbols or len(symbols) != 1:
                raise FeatureStoreError("a CSV import needs path=FILE and exactly one symbol (--path FILE --symbol S)")
            return ingest.ingest_csv(self.store, path, symbol=symbols[0], timeframe=timeframe, now=now,
                                     exchange=exchange or "csv")
        if source == "ccxt":
            return ingest.ingest_exchange(self.store, exchange or self.config.exchange or "binance",
                                          list(symbols or ["BTC/USDT"]), timeframe, since=since, until=until, now=now)
        raise FeatureStoreError(f"unknown source {source!r}: use synthetic, ccxt, csv or resample")

    def validate(self, symbols: Sequence[str] | None = None) -> StoreReport:
        """Re-check every stored bar against the bar contract, and list the gaps."""
        return validate_store(self.store, symbols=list(symbols) if symbols else None)

    def sql(self, query: str) -> pl.DataFrame:
        """One read-only SQL statement over the store's views (``bars``, ``features_<view>``)."""
        from featurestore.sql import run_sql

        return run_sql(query, self.store)

    # -- definitions

    def apply(self, definitions: str | Path | Sequence[FeatureView] | None = None, *, builtin: str | None = None,
              timeframe: str | None = None) -> list[AppliedView]:
        """Register feature views, all or nothing: a module's views, a list of views, a built-in template bound to
        a timeframe (``builtin="research", timeframe="1h"`` gives ``research_1h``), or the config's modules."""
        now = self.clock()
        if builtin is not None:
            from featurestore.builtin_views import builtin_view

            if definitions is not None:
                raise FeatureStoreError("apply either definitions or a built-in template, not both")
            view = builtin_view(builtin, timeframe or self.config.timeframe)
            return apply_views(self.store, [view], now=now, source=f"builtin:{builtin}")
        if timeframe is not None:
            raise FeatureStoreError("timeframe binds a built-in template: apply(builtin=..., timeframe=...)")
        if definitions is None:
            paths = self.config.definition_paths(self.root)
            if not paths:
                raise FeatureStoreError(f"nothing to apply: name a definitions module, or list modules under "
                                        f"definitions in {self.store.config_path}")
            loaded = [(path, load_definitions(path)) for path in paths]  # every module checked before any is applied
            return [change for path, views in loaded
                    for change in apply_views(self.store, views, now=now, source=str(path))]
        if isinstance(definitions, str | Path):
            return apply_views(self.store, load_definitions(definitions), now=now, source=str(Path(definitions)))
        return apply_views(self.store, list(definitions), now=now, source="python")

    def view(self, name: str) -> FeatureView:
        """A view by name (``name@version`` for an older registered version)."""
        return resolve_view(self.store, name)

    def views(self) -> list[ViewStatus]:
        """Every registered view (and every built-in not registered yet) with what is stored of it."""
        from featurestore.builtin_views import BUILTIN_VIEWS

        now, found = self.clock(), registered_views(self.store)
        statuses = []
        for name, view in sorted({**{v.name: v for v in BUILTIN_VIEWS}, **found}.items()):
            entry = registered(self.store, name)
            source = entry["versions"].get(view.version, {}).get("source", "builtin")
            stored = stored_range(self.store, view)
            statuses.append(ViewStatus(view, source, name in found, stored.rows, stored.first, stored.last,
                                       None if stored.last is None else now - stored.last))
        return statuses

    def backfill(self, views: str | Sequence[str], *, symbols: Sequence[str] | None = None,
                 start: datetime | None = None, end: datetime | None = None, exchange: str | None = None,
                 progress: bool = False) -> list[BackfillReport]:
        """Compute views into the offline store (every name is resolved before anything is computed)."""
        names = [views] if isinstance(views, str) else list(views)
        resolved = [self.view(name) for name in names]
        return [backfill(self.store, view, now=self.clock(), symbols=list(symbols) if symbols else None,
                         exchange=exchange or self.config.exchange, start=start, end=end, progress=progress)
                for view in resolved]

    # -- the online store

    def materialize(self, view: str, *, symbols: Sequence[str] | None = None, exchange: str | None = None) -> int:
        """Copy each symbol's newest offline row of ``view`` into the online store; return the rows written."""
        from featurestore.materialize import materialize_latest
        from featurestore.online import connect

        resolved = self.view(view)
        exchange = self.store.resolve_exchange(resolved.timeframe, exchange or self.config.exchange)
        chosen = list(symbols) if symbols else [s.symbol for s in self.store.series(exchange=exchange,
                                                                                    timeframe=resolved.timeframe)]
        with connect(self.store.online_url) as online:
            return materialize_latest(self.store, resolved, chosen, online, now=self.clock(), exchange=exchange)

    def get_online_features(self, symbols: Sequence[str], features: Sequence[str]) -> pl.DataFrame:
        """The latest online values: one row per symbol, a column per ``view:feature`` (``view`` alone: all of its
        features), named ``view__feature``, plus ``view__ts``; null where the online store has no row."""
        from featurestore.online import connect

        selected = self._select(features)
        with connect(self.store.online_url, readonly=True) as online:
            rows = {view.name: online.get_many(view.name, symbols) for view, _ in selected}
        out = []
        for symbol in symbols:
            record: dict[str, object] = {"symbol": symbol}
            for view, names in selected:
                row = rows[view.name].get(symbol)
                record[f"{view.name}__ts"] = None if row is None else row.ts
                record.update({f"{view.name}__{n}": None if row is None else row.features.get(n) for n in names})
            out.append(record)
        schema = {"symbol": pl.String, **{c: pl.Datetime("us", "UTC") if c.endswith("__ts") else pl.Float64
                                          for view, names in selected for c in
                                          (f"{view.name}__ts", *(f"{view.name}__{n}" for n in names))}}
        return pl.DataFrame(out, schema=schema, orient="row")

    def _select(self, features: Sequence[str]) -> list[tuple[FeatureView, list[str]]]:
        """``view:feature`` references grouped by view, in the order given (``view`` alone: every feature)."""
        chosen: dict[str, tuple[FeatureView, list[str]]] = {}
        for reference in features:
            name, _, feature = reference.partition(":")
            view = chosen[name][0] if name in chosen else self.view(name)
            names = chosen.setdefault(name, (view, []))[1]
            wanted = [feature] if feature else view.feature_names
            for one in wanted:
                if one not in view.features:
                    close = difflib.get_close_matches(one, view.feature_names, n=1)
                    raise DefinitionError(f"view {view.name!r} has no feature {one!r}"
                                          + (f"; did you mean {close[0]!r}?" if close else "")
                                          + f" (features: {', '.join(view.feature_names)})")
                if one not in names:
                    names.append(one)
        return list(chosen.values())
