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
>>> [(c.name, c.action) for c in fs.apply(builtin="research")]
[('research_1h', 'registered')]
>>> fs.backfill("research_1h")[0].rows_written
{'BTC/USDT': 1440}
>>> fs.sql("SELECT count(*) AS n FROM features_research_1h")["n"].item()
1440
>>> train = fs.get_historical_features(features=["research_1h:ret_1", "research_1h:rv_24"], all_bars=True,
...                                    labels=["future_ret:h=1"])
>>> train.columns[:5], train.height
(['symbol', 'event_ts', 'research_1h__ts', 'research_1h__ret_1', 'research_1h__rv_24'], 1440)
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from featurestore.backfill import BackfillReport, backfill
from featurestore.catalog import refresh_catalog
from featurestore.config import StoreConfig, with_overrides, write_config
from featurestore.definitions import FeatureView
from featurestore.durations import parse_bars_or_duration
from featurestore.entities import EntitySource
from featurestore.errors import DefinitionError, FeatureStoreError
from featurestore.export import ExportFormat, ExportOptions, ExportResult, training_set, write_training_set
from featurestore.offline import stored_range
from featurestore.registry import (
    AppliedView,
    apply_views,
    load_definitions,
    registered,
    registered_views,
    resolve_view,
)
from featurestore.sources.synthetic import Regime
from featurestore.sql import SqlSession
from featurestore.store import BarSeries, Store, default_store_root
from featurestore.validate import StoreReport, validate_store
from training.model import ModelKind, ModelParams
from training.onnx_export import OnnxDtype
from training.splits import CvScheme

if TYPE_CHECKING:
    from app.monitoring import MonitorSource
    from serving.monitoring import MonitorReport
    from serving.scorer import Scorer
    from serving.signal_service import Mode, SignalService
    from serving.signals import Thresholds
    from streaming.consistency import ConsistencyReport
    from streaming.flow import StreamConfig
    from streaming.parity import ParityReport
    from training.registry import ModelVersion
    from training.train import TrainResult

__all__ = ["FeatureStore", "ViewStatus"]

_DEFAULT_SINCE = datetime(2024, 1, 1, tzinfo=UTC)

Clock = Callable[[], datetime]


def _absolute(options: Mapping[str, Any], paths: Sequence[str]) -> dict[str, Any]:
    """``options`` with the values under ``paths`` made absolute: the processes of a cluster, started in other
    directories, must name the same files."""
    return {key: str(Path(value).absolute()) if key in paths and value else value for key, value in options.items()}


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
        self.store.config  # noqa: B018 - a broken featurestore.toml is refused by every verb, before any work

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
               from_timeframe: str = "1m", regime: Regime | None = None, allow_partial: bool = False,
               timezone: str | None = None) -> dict[str, int]:
        """Bring bars in from ``synthetic`` (default; the market switches to ``regime`` at its time), ``ccxt``,
        ``csv`` (``path``, one symbol, naive times in ``timezone``; every row from ``since`` to ``until``, by
        default the whole file) or ``resample`` (``from_timeframe`` bars already stored: complete periods only,
        unless ``allow_partial``, which stores and records the others too); return new bars per symbol.
        ``since`` defaults to 2024-01-01 for the synthetic market and ccxt."""
        from featurestore import ingest

        now, timeframe = self.clock(), timeframe or self.config.timeframe
        if timezone is not None and source != "csv":
            raise FeatureStoreError("--timezone reads the naive times of a CSV file; other sources are in UTC")
        if allow_partial and source != "resample":
            raise FeatureStoreError("allow_partial (--allow-partial) is for --source resample: other sources store "
                                    "the bars they are given")
        if source == "csv":
            if path is None or not symbols or len(symbols) != 1:
                raise FeatureStoreError("a CSV import needs path=FILE and exactly one symbol (--path FILE --symbol S)")
            return ingest.ingest_csv(self.store, path, symbol=symbols[0], timeframe=timeframe, now=now,
                                     exchange=exchange or "csv", since=since, until=until, timezone=timezone)
        since = since or _DEFAULT_SINCE
        if until is not None and until <= since:
            raise FeatureStoreError(f"--end {until.isoformat()} is not after --start {since.isoformat()} (the default "
                                    f"start of the {source} source); give an --end after it, or an earlier --start")
        if source == "synthetic":
            return ingest.ingest_synthetic(self.store, list(symbols or ["BTC/USDT"]), timeframe, since=since,
                                           until=until, now=now, seed=seed, regime=regime)
        if regime is not None:
            raise FeatureStoreError("a regime switches the synthetic market; other sources are what they are")
        if source == "resample":
            return ingest.ingest_resampled(self.store, exchange=exchange or self.config.exchange or "synthetic",
                                           from_timeframe=from_timeframe, timeframe=timeframe, now=now,
                                           symbols=list(symbols) if symbols else None, allow_partial=allow_partial)
        if source == "ccxt":
            return ingest.ingest_exchange(self.store, exchange or self.config.exchange or "binance",
                                          list(symbols or ["BTC/USDT"]), timeframe, since=since, until=until, now=now)
        raise FeatureStoreError(f"unknown source {source!r}: use synthetic, ccxt, csv or resample")

    def validate(self, symbols: Sequence[str] | None = None) -> StoreReport:
        """Re-check every stored bar against the bar contract, and list the gaps."""
        return validate_store(self.store, symbols=list(symbols) if symbols else None)

    def compact(self, *, exchange: str | None = None, timeframe: str | None = None,
                symbols: Sequence[str] | None = None) -> dict[BarSeries, int]:
        """Fold the delta files appended to each stored series (``Store.write_bars``) into its year files;
        return the delta files folded per series (a series with none is left as it is: re-runs do nothing)."""
        chosen = self.store.series(exchange=exchange, timeframe=timeframe, symbols=list(symbols) if symbols else None)
        missing = sorted(set(symbols or ()) - {series.symbol for series in chosen})
        if missing:
            raise FeatureStoreError(f"no stored bars for {missing} in {self.root} (exchange {exchange or 'any'}, "
                                    f"timeframe {timeframe or 'any'})")
        folded = {series: self.store.compact(series) for series in chosen}
        refresh_catalog(self.store)
        return folded

    def sql(self, query: str) -> pl.DataFrame:
        """One read-only SQL statement over the store's views (``bars``, ``features_<view>``), on a DuckDB
        connection kept open between calls (``close`` ends it)."""
        return self._sql_session.sql(query)

    @functools.cached_property
    def _sql_session(self) -> SqlSession:
        return SqlSession(self.store)

    def close(self) -> None:
        """Close what the store object holds open (the SQL connection); it reopens when used again."""
        session = self.__dict__.pop("_sql_session", None)
        if session is not None:
            session.close()

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

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
                 progress: bool = False, workers: int = 1, process_id: int | None = None,
                 addresses: Sequence[str] | None = None, join_timeout_s: float = 120.0) -> list[BackfillReport]:
        """Compute views into the offline store (every name is resolved before anything is computed).

        ``workers`` > 1, or a cluster (``process_id`` and the ``addresses`` of every process, each process
        calling this with the same arguments), runs it as a Bytewax dataflow (``streaming.backfill``): the
        same rows, stamped with process 0's clock; a process reports what its own workers wrote.
        """
        names = [views] if isinstance(views, str) else list(views)
        resolved = [self.view(name) for name in names]
        options = {"symbols": list(symbols) if symbols else None, "exchange": exchange or self.config.exchange,
                   "start": start, "end": end}
        if workers == 1 and process_id is None and addresses is None:
            return [backfill(self.store, view, now=self.clock(), progress=progress, **options) for view in resolved]
        from streaming.backfill import run_backfill
        from streaming.cluster import join

        described = {"store": self.root, "views": {view.name: view.version for view in resolved}, "workers": workers,
                     **{key: str(value) if isinstance(value, datetime) else value for key, value in options.items()}}
        agreed = join(process_id, addresses, _absolute(described, ("store",)), shared={"now": self.clock().isoformat()},
                      timeout_s=join_timeout_s)
        return run_backfill(self.store, resolved, now=datetime.fromisoformat(agreed["now"]), workers=workers,
                            process_id=process_id, addresses=list(addresses) if addresses else None, **options)

    # -- the online store

    def materialize(self, view: str, *, symbols: Sequence[str] | None = None, exchange: str | None = None) -> int:
        """Copy each symbol's newest offline row of ``view`` into the online store; return the rows written."""
        from featurestore.durations import parse_ttl
        from featurestore.materialize import materialize_latest
        from featurestore.online import connect

        resolved = self.view(view)
        exchange = self.store.resolve_exchange(resolved.timeframe, exchange or self.config.exchange)
        chosen = list(symbols) if symbols else [s.symbol for s in self.store.series(exchange=exchange,
                                                                                    timeframe=resolved.timeframe)]
        with connect(self.store.online_url, ttl=parse_ttl(None, [resolved])) as online:
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

    # -- training sets and models

    def _export(self, features: Sequence[str], labels: Sequence[str], *, ttl: str | Mapping[str, timedelta] | None,
                **options: object) -> tuple[list[FeatureView], ExportOptions]:
        """The views and ``ExportOptions`` of ``view:feature`` references, label specs and a TTL."""
        from featurestore.durations import parse_ttl
        from training.labels import parse_label

        selected = self._select(features)
        views = [view for view, _ in selected]
        if isinstance(ttl, str):
            ttl = parse_ttl(ttl, views)
        return views, ExportOptions(labels=[parse_label(text) for text in labels], ttl=ttl,
                                    features={view.name: names for view, names in selected}, **options)

    def get_historical_features(self, entities: EntitySource | None = None, *, features: Sequence[str],
                                labels: Sequence[str] = (), ttl: str | Mapping[str, timedelta] | None = None,
                                all_bars: bool = False, symbols: Sequence[str] | None = None,
                                start: datetime | None = None, end: datetime | None = None,
                                as_of_created: bool = False, exchange: str | None = None) -> pl.DataFrame:
        """A point-in-time training set: for each entity row (``symbol``, ``event_ts``; or with ``all_bars`` every
        row of the first view) the ``features`` (``view:feature``, or ``view`` for all of it) as of ``event_ts``
        within each view's TTL (``2h``, ``research=2m,daily_trend=1d``; default one timeframe), and ``labels``
        (``future_ret:h=1``, ...). Columns are ``view__feature``."""
        views, options = self._export(features, labels, ttl=ttl, all_bars=all_bars, symbols=symbols, start=start,
                                      end=end, as_of_created=as_of_created,
                                      exchange=exchange or self.config.exchange)
        return training_set(self.store, views, entities, options=options)

    def export(self, path: str | Path, entities: EntitySource | None = None, *, features: Sequence[str],
               labels: Sequence[str] = (), ttl: str | Mapping[str, timedelta] | None = None, all_bars: bool = False,
               symbols: Sequence[str] | None = None, start: datetime | None = None, end: datetime | None = None,
               as_of_created: bool = False, exchange: str | None = None,
               format: ExportFormat | None = None, progress: bool = False) -> ExportResult:
        """``get_historical_features`` written to a parquet, CSV or Arrow file with a JSON sidecar (``progress``: a
        bar by symbol on a terminal)."""
        views, options = self._export(features, labels, ttl=ttl, all_bars=all_bars, symbols=symbols, start=start,
                                      end=end, as_of_created=as_of_created,
                                      exchange=exchange or self.config.exchange)
        return write_training_set(path, self.store, views, entities, options=options, format=format,
                                  progress=progress)

    def train(self, *, features: Sequence[str], label: str, name: str, kind: ModelKind = "regressor",
              ttl: str | Mapping[str, timedelta] | None = None, symbols: Sequence[str] | None = None,
              start: datetime | None = None, end: datetime | None = None, params: ModelParams | None = None,
              folds: int = 4, onnx_dtype: OnnxDtype = "float64", threshold: float | None = None,
              cost_bps: float = 5.0, exchange: str | None = None, promote: bool = False,
              models_dir: str | Path | None = None, progress: bool = False, cv: CvScheme = "walk-forward",
              embargo: int | str | timedelta = 0) -> TrainResult:
        """Train a LightGBM model on ``features`` (as for ``get_historical_features``; every feature row of the first
        view is a sample), evaluate it out of sample (``cv``: walk-forward or purged-kfold, ``folds`` test blocks,
        purged on each label's end and embargoed for ``embargo``: bars, ``"3"``, or a span, ``"2h"``), export it
        to ONNX behind the parity gate and publish it to the model registry (``promote``: make it production).
        ``threshold``: None chooses one on the out-of-sample folds, cost-aware; ``TrainResult.warnings`` says
        when costs dominate the backtest."""
        from training.registry import models_root
        from training.registry import promote as promote_version
        from training.train import train_model

        if isinstance(embargo, str):
            embargo = parse_bars_or_duration(embargo)
        views, options = self._export(features, [label], ttl=ttl)
        result = train_model(self.store, views=views, label=options.labels[0], name=name,
                             models_root=models_root(self.store, models_dir), now=self.clock(), kind=kind,
                             symbols=symbols, start=start, end=end, params=params or ModelParams(kind=kind),
                             folds=folds, onnx_dtype=onnx_dtype, cost_bps=cost_bps, threshold=threshold,
                             ttl=options.ttl, exchange=exchange or self.config.exchange, features=options.features,
                             progress=progress, cv=cv, embargo=embargo)
        if promote:
            promote_version(models_root(self.store, models_dir), result.name, result.version)
        return result

    def models(self, name: str | None = None, *, models_dir: str | Path | None = None) -> list[ModelVersion]:
        """Every published model version (of ``name``), by name then training time."""
        from training.registry import list_models, models_root

        return list_models(models_root(self.store, models_dir), name)

    def promote(self, name: str, version: str, *, models_dir: str | Path | None = None) -> None:
        """Point ``name``'s production at ``version``."""
        from training.registry import models_root, promote

        promote(models_root(self.store, models_dir), name, version)

    # -- scoring

    def model_dir(self, model: str | None = None, *, version: str | None = None,
                  models_dir: str | Path | None = None) -> Path:
        """A model's directory: a registry name (``version``, else production), a directory, or (``None``) the
        only model with a production version."""
        from serving.scorer import resolve_model_dir
        from training.registry import models_root

        if model is None:
            names = sorted({m.name for m in self.models(models_dir=models_dir) if m.production})
            if len(names) != 1:
                raise FeatureStoreError("name the model (--model NAME, or a model directory); production models: "
                                        + (", ".join(names) or "none (featurestore models promote NAME VERSION)"))
            model = names[0]
        return resolve_model_dir(self.store, model, version=version,
                                 models=None if models_dir is None else models_root(self.store, models_dir))

    def scorer(self, model: str | None = None, *, version: str | None = None, models_dir: str | Path | None = None,
               max_age: Mapping[str, timedelta] | timedelta | None = None) -> Scorer:
        """A ``Scorer`` of the model on this store's online store (close it, or use it in a ``with``)."""
        from featurestore.online import connect
        from serving.scorer import Scorer, load_model

        loaded = load_model(self.model_dir(model, version=version, models_dir=models_dir))
        return Scorer(loaded, connect(self.store.online_url, readonly=True), max_age=max_age)

    def score(self, symbols: Sequence[str], *, model: str | None = None, version: str | None = None,
              as_of: datetime | None = None, max_age: Mapping[str, timedelta] | timedelta | None = None,
              models_dir: str | Path | None = None) -> pl.DataFrame:
        """Score ``symbols`` from the online store as of ``as_of`` (default now): one row per symbol with ``ts``
        (the row time the decision is for), ``score`` and the inputs fed to the model. Nothing is signed or logged."""
        with self.scorer(model, version=version, models_dir=models_dir, max_age=max_age) as scorer:
            scores = scorer.score(symbols, now=as_of or self.clock())
        return pl.DataFrame([{"symbol": s.symbol, "ts": s.ts, "score": s.score, **s.features} for s in scores])

    def signals(self, symbols: Sequence[str], *, model: str | None = None, version: str | None = None,
                as_of: datetime | None = None, max_age: Mapping[str, timedelta] | timedelta | None = None,
                thresholds: Thresholds | None = None, size: float = 1.0, audit: str | Path | None = None,
                key: bytes | None = None, models_dir: str | Path | None = None) -> list[dict]:
        """Signed signals (LONG / SHORT / FLAT with the position transition) for ``symbols``, appended to the audit
        log; asking again for the same feature rows returns the logged signals. ``key``: default
        ``$FEATURESTORE_SIGNING_KEY``. With ``as_of`` the decisions are about that past moment: a replay, marked
        ``mode: replay`` and logged to the replay log (default ``<store>/signals/replay.jsonl``)."""
        with self.signal_service(model, version=version, max_age=max_age, thresholds=thresholds, size=size,
                                 audit=audit, key=key, models_dir=models_dir, fsync=True,
                                 mode="live" if as_of is None else "replay") as service:
            return service.signals(symbols, now=as_of or self.clock())

    def signal_service(self, model: str | None = None, *, version: str | None = None,
                       max_age: Mapping[str, timedelta] | timedelta | None = None, thresholds: Thresholds | None = None,
                       size: float = 1.0, audit: str | Path | None = None, key: bytes | None = None,
                       models_dir: str | Path | None = None, fsync: bool = True,
                       mode: Mode = "live") -> SignalService:
        """The ``SignalService`` behind ``signals`` and the HTTP service (close it, or use it in a ``with``); its
        audit log defaults to the store's live log, or its replay log for ``mode="replay"``."""
        from serving.audit import AuditLog
        from serving.signal_service import SignalService
        from serving.signals import signing_key

        key = key or signing_key()
        scorer = self.scorer(model, version=version, models_dir=models_dir, max_age=max_age)
        try:
            log = AuditLog(audit or self._audit_path(mode), key=key, fsync=fsync)
        except BaseException:
            scorer.close()
            raise
        return SignalService(scorer, audit=log, thresholds=thresholds, size=size, mode=mode)  # closes both if it refuses

    def _audit_path(self, mode: Mode) -> Path:
        return self.store.audit_path if mode == "live" else self.store.replay_audit_path

    # -- streaming

    def stream(self, view: str, *, source: str = "replay", symbols: Sequence[str] | None = None,
               exchange: str | None = None, start: datetime | None = None, end: datetime | None = None,
               batch: int = 1000, speed: float = 0.0, poll_interval_s: float = 5.0, jsonl: str | Path | None = None,
               offline_parts: bool = True, store_bars: bool = True, metrics: str | Path | None = None,
               model: str | None = None, workers: int = 1, process_id: int | None = None, addresses: Sequence[str] | None = None,
               join_timeout_s: float = 120.0, recovery_dir: str | Path | None = None, snapshot_interval_s: float = 10.0,
               backup_interval_s: float = 0.0, progress: bool = False, **signals: Any) -> StreamConfig:
        """Run the Bytewax dataflow for ``view`` until its source ends (live: until interrupted): bars replayed from
        the store (``source="replay"``, ``start <= ts < end``, ``batch`` bars a window, paced by ``speed``) or
        polled live from ccxt, into the online store, the row log (``offline_parts``: parquet parts under
        ``kind=stream/``, what ``consistency`` checks), the bar store (``store_bars``: a live stream appends the bars it
        receives) and the optional sinks; with ``model`` every row becomes a
        signed signal (``signals``: the keyword arguments of ``signal_service``); ``progress``: a replay's bar on a
        terminal. Returns the run's config.

        A cluster (``process_id`` and the ``addresses`` of every process, each process calling this with the same
        arguments): the processes agree on their options first (``streaming.cluster.join``), or all refuse.
        """
        from streaming.cluster import join
        from streaming.flow import StreamConfig, build_flow
        from streaming.placement import Placement
        from streaming.runner import run_flow

        resolved = self.view(view)
        if symbols is None:
            if source == "ccxt":
                raise FeatureStoreError("--source ccxt needs --symbols, e.g. --symbols BTC/USDT,ETH/USDT (a live stream "
                                        "polls only the symbols it is given)")
            stored = self.store.resolve_exchange(resolved.timeframe, exchange or self.config.exchange)
            symbols = [s.symbol for s in self.store.series(exchange=stored, timeframe=resolved.timeframe)]
        resumes = recovery_dir is not None and any(Path(recovery_dir).glob("part-*.sqlite3"))
        if source == "ccxt" and start is None and not resumes:
            from streaming.sources.live import exchange_id, first_bar_after_stored

            for symbol in symbols:  # checked here: raised inside the flow, Bytewax would panic first
                first_bar_after_stored(self.store, exchange_id(exchange or self.config.exchange), resolved.timeframe,
                                       symbol)
        config = StreamConfig(  # the view as asked: name@version streams that version, not the current one
            store=str(self.root), view=view, symbols=list(symbols), source=source,
            exchange=exchange or self.config.exchange, start=start.isoformat() if start else None,
            until=end.isoformat() if end else None, batch=batch, speed=speed, poll_interval_s=poll_interval_s,
            jsonl=str(jsonl) if jsonl else None, offline_parts=offline_parts, store_bars=store_bars,
            metrics=str(metrics) if metrics else None, progress=progress,
            **(self._signal_config(resolved, model, **signals) if model else {}))
        flow = build_flow(config, placement=Placement(process_id or 0, len(addresses) if addresses else 1, workers))
        described = {**asdict(config), "view_version": resolved.version, "steps": [step.step_id for step in flow.substeps],
                     "workers": workers, "recovery_dir": recovery_dir, "snapshot_interval_s": snapshot_interval_s,
                     "backup_interval_s": backup_interval_s}
        join(process_id, addresses, _absolute(described, ("store", "jsonl", "metrics", "model", "audit", "recovery_dir")),
             timeout_s=join_timeout_s)
        run_flow(flow, workers=workers, process_id=process_id, addresses=list(addresses) if addresses else None,
                 recovery_dir=Path(recovery_dir) if recovery_dir else None, snapshot_interval_s=snapshot_interval_s,
                 backup_interval_s=backup_interval_s)
        return config

    def _signal_config(self, view: FeatureView, model: str, *, version: str | None = None,
                       max_age: Mapping[str, timedelta] | timedelta | None = None,
                       thresholds: Thresholds | None = None, size: float = 1.0, audit: str | Path | None = None,
                       models_dir: str | Path | None = None) -> dict[str, Any]:
        """The ``StreamConfig`` fields that score every streamed row with ``model`` (resolved once, here, so
        every process of a cluster scores with the same version)."""
        from serving.scorer import load_model

        model_dir = self.model_dir(model, version=version, models_dir=models_dir)
        if isinstance(max_age, timedelta):
            max_age = dict.fromkeys(load_model(model_dir).view_versions, max_age)
        return {"model": str(model_dir), "audit": str(audit) if audit else None,
                "thresholds": [thresholds.long_above, thresholds.short_below] if thresholds else None, "size": size,
                "max_age_s": {v: age.total_seconds() for v, age in max_age.items()} if max_age else None}

    def parity(self, view: str, *, symbols: Sequence[str] | None = None, start: datetime | None = None,
               exchange: str | None = None, batch: int = 1000) -> ParityReport:
        """Replay the stored bars through the incremental engine and compare with the offline store."""
        from streaming.parity import replay_parity

        return replay_parity(self.store, self.view(view), symbols=list(symbols) if symbols else None,
                             exchange=exchange or self.config.exchange, start=start, batch=batch)

    # -- monitoring

    def monitor(self, model: str | None = None, *, version: str | None = None, window: timedelta = timedelta(days=1),
                end: datetime | None = None, source: MonitorSource = "auto", symbols: Sequence[str] | None = None,
                audit: str | Path | None = None, models_dir: str | Path | None = None,
                thresholds: Mapping[str, float] | None = None) -> MonitorReport:
        """Check a model over ``end - window < ts <= end`` (``end`` default now): drift of its inputs and scores
        against its training set, freshness of its online rows, live performance of its matured signals beside
        the backtest (``app.monitoring``); thresholds from ``[monitor]`` in ``featurestore.toml``, then
        ``thresholds``. The report is written to ``<store>/monitor/model-<name>.json`` and returned."""
        from app.monitoring import monitor_model

        return monitor_model(self, self.model_dir(model, version=version, models_dir=models_dir), window=window,
                             end=end or self.clock(), source=source, symbols=list(symbols) if symbols else None,
                             audit=[Path(audit)] if audit else [self.store.audit_path, self.store.replay_audit_path],
                             thresholds=dict(thresholds or {}))

    def consistency(self, view: str, *, start: datetime | None = None, end: datetime | None = None,
                    symbols: Sequence[str] | None = None, exchange: str | None = None) -> ConsistencyReport:
        """The rows the dataflow logged for ``view`` (``start <= ts < end``, default all) against the same rows
        recomputed from the offline store now, bit for bit (``streaming.consistency``); the report is written to
        ``<store>/monitor/consistency-<view>.json`` and returned."""
        from featurestore.atomic import write_bytes_atomic
        from streaming.consistency import consistency

        resolved = self.view(view)
        report = consistency(self.store, resolved, now=self.clock(), exchange=exchange or self.config.exchange,
                             symbols=list(symbols) if symbols else None, start=start, end=end)
        write_bytes_atomic(report.to_json().encode(), self.store.consistency_report_path(resolved.name))
        return report
