"""Point-in-time training sets: entity rows, each view's features as of the row, and labels; to a frame or a file.

Rules (``docs/point-in-time.md``): every entity row ``(symbol, event_ts)`` (``featurestore.entities``, or with
``all_bars`` every stored feature row of the first view) gets each view's features as of ``event_ts``,
within the view's TTL (default one timeframe), through ``featurestore.pit_join``; then the labels of the last
bar closed by ``event_ts`` with their sample weights (``featurestore.label_join``). Work goes one symbol at a
time, so memory holds one symbol's entities, features and bars. Everything that can be checked is checked
before any row is read or written (``_plan``). Output rows are sorted by ``(symbol, event_ts)``, ties in
input order; ``event_ts`` is ``Datetime("us", "UTC")``; feature ``f`` of view ``v`` is column ``v__f``.

``training_set`` gives one frame, ``iter_training_set`` one frame per symbol, and ``write_training_set``
writes a parquet, CSV or Arrow file symbol by symbol, atomically, with a sidecar ``<file>.json``. What
to export besides the views and the entities (all bars, labels, TTLs, ...) is one ``ExportOptions``.

>>> output_format(Path("train.parquet"), None), output_format(Path("train.out"), "csv")
('parquet', 'csv')
>>> output_format(Path("train.txt"), None)
Traceback (most recent call last):
...
featurestore.errors.TrainingDataError: cannot tell the format of train.txt from its extension; name it .parquet,
.csv or .arrow, or pass --format
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import polars as pl
from tqdm import tqdm

from featurestore.atomic import atomic_path, write_bytes_atomic
from featurestore.definitions import FeatureView
from featurestore.durations import parse_ttl
from featurestore.entities import EVENT_TS, SUFFIX_FORMAT, EntitySource, check_entity_rows, read_entities
from featurestore.errors import TrainingDataError
from featurestore.label_join import LABEL_BAR_COLUMNS, Label, attach_labels, empty_labels
from featurestore.offline import read_features
from featurestore.pit_join import feature_column, point_in_time_join
from featurestore.store import Store

__all__ = [
    "EXPORT_FORMATS",
    "ExportOptions",
    "ExportResult",
    "iter_training_set",
    "output_format",
    "training_set",
    "write_training_set",
]

ExportFormat = Literal["parquet", "csv", "arrow"]
EXPORT_FORMATS: tuple[str, ...] = ("parquet", "csv", "arrow")


@dataclass(frozen=True, kw_only=True)
class ExportOptions:
    """What a training set holds besides the views and the entity table; every field is optional.

    - ``all_bars``: every stored feature row of the first view is an entity row (``event_ts`` = its ``ts``),
      instead of an entity table.
    - ``labels``: labels to attach (``training.labels.LabelSpec``), computed on the first view's bars.
    - ``ttl``: per view, how old a joined feature row may be; a view not named keeps one timeframe.
    - ``as_of_created``: a feature row written (``created_at``) after ``event_ts`` does not exist for it.
    - ``symbols``: only these symbols (default: those of the entity table, or with ``all_bars`` every
      symbol stored for the first view).
    - ``start``, ``end``: only entity rows with ``start <= event_ts < end``.
    - ``exchange``: the exchange of the label bars (default: the only one stored).
    - ``features``: per view, the features to export, in that order (a view not named: all of its features).

    >>> from featurestore.builtin_views import DAILY_TREND, RESEARCH
    >>> options = ExportOptions(all_bars=True, symbols=["BTC/USDT"], ttl={"research": timedelta(minutes=2)})
    >>> options.symbols, options.view_ttls([RESEARCH, DAILY_TREND])
    (('BTC/USDT',), {'research': datetime.timedelta(seconds=120), 'daily_trend': datetime.timedelta(days=1)})
    >>> ExportOptions(features={"research": ["ret_1", "rv_24"]}).features_of(RESEARCH)
    ['ret_1', 'rv_24']
    >>> ExportOptions(all_bar=True)
    Traceback (most recent call last):
    ...
    TypeError: ...unexpected keyword argument 'all_bar'
    """

    all_bars: bool = False
    labels: Sequence[Label] = ()
    ttl: Mapping[str, timedelta] | None = None
    as_of_created: bool = False
    symbols: Sequence[str] | None = None
    start: datetime | None = None
    end: datetime | None = None
    exchange: str | None = None
    features: Mapping[str, Sequence[str]] | None = None

    def __post_init__(self) -> None:  # lists become tuples: a frozen object whose fields do not change
        object.__setattr__(self, "labels", tuple(self.labels))
        if self.symbols is not None:
            object.__setattr__(self, "symbols", tuple(self.symbols))
        if self.features is not None:
            object.__setattr__(self, "features", {view: tuple(names) for view, names in self.features.items()})

    def features_of(self, view: FeatureView) -> list[str]:
        """The features of ``view`` to export: the selected ones, else all of them."""
        return list((self.features or {}).get(view.name, view.feature_names))

    def view_ttls(self, views: Sequence[FeatureView]) -> dict[str, timedelta]:
        """The TTL of each of ``views``: ``ttl``'s where named, else one timeframe of the view."""
        return {**parse_ttl(None, views), **(self.ttl or {})}


def iter_training_set(store: Store, views: Sequence[FeatureView], entities: EntitySource | None = None, *,
                      options: ExportOptions | None = None) -> Iterator[pl.DataFrame]:
    """``training_set`` one symbol at a time (memory holds one symbol's entities, features and bars)."""
    options = ExportOptions() if options is None else options
    yield from _chunks(store, views, _plan(store, views, entities, options), options)


def _chunks(store: Store, views: Sequence[FeatureView], plan: _Plan, options: ExportOptions,
            progress: bool = False) -> Iterator[pl.DataFrame]:
    """The training set of ``plan``, one symbol at a time: entity rows, each view joined, labels. ``progress``:
    a bar by symbol on a terminal (tqdm's choice), nothing otherwise."""
    first = views[0]
    for symbol in tqdm(plan.symbols, desc="export", unit="symbol", disable=None if progress else True):
        if options.all_bars:
            rows = read_features(store, first, symbols=[symbol]).select("symbol", "ts")
            rows = _window(rows, options.start, options.end).collect()
            chunk = rows.select("symbol", pl.col("ts").cast(EVENT_TS).alias("event_ts"))
        else:
            chunk = _window(plan.entities.filter(pl.col("symbol") == symbol), options.start, options.end,
                            "event_ts").collect()
        if chunk.is_empty():
            continue
        chunk = chunk.with_row_index("__order").sort("event_ts", "__order").drop("__order")
        low, high = chunk["event_ts"].min(), chunk["event_ts"].max()
        for view in views:
            rows = read_features(store, view, symbols=[symbol]).filter(
                pl.col("ts").is_between(low - plan.ttl[view.name], high))
            features = options.features_of(view)
            rows = rows.select("symbol", "ts", *features, "created_at").collect()
            chunk = point_in_time_join(chunk, rows, view=view.name, features=features,
                                       ttl=plan.ttl[view.name], as_of_created=options.as_of_created)
        if options.labels:
            bars = store.scan_bars(plan.exchange, first.timeframe, [symbol]).select(LABEL_BAR_COLUMNS).collect()
            chunk = attach_labels(chunk, bars, options.labels, first.timeframe)
        yield chunk


def _window(frame: pl.LazyFrame, start: datetime | None, end: datetime | None, column: str = "ts") -> pl.LazyFrame:
    if start is not None:
        frame = frame.filter(pl.col(column) >= start)
    if end is not None:
        frame = frame.filter(pl.col(column) < end)
    return frame


@dataclass(frozen=True)
class _Plan:
    symbols: list[str]
    entities: pl.LazyFrame | None
    ttl: dict[str, timedelta]
    exchange: str | None


def _plan(store: Store, views: Sequence[FeatureView], entities: EntitySource | None, options: ExportOptions) -> _Plan:
    """Check everything that can be checked before any row is read or written."""
    labels, symbols = options.labels, options.symbols
    if not views:
        raise TrainingDataError("give at least one feature view")
    names = [view.name for view in views]
    if len(set(names)) != len(names):
        raise TrainingDataError(f"view listed twice: {names}")
    if options.all_bars == (entities is not None):
        raise TrainingDataError("give either an entity file or all_bars (--entities FILE or --all-bars), not both or neither")
    ttl = options.view_ttls(views)
    for view_name, selected in (options.features or {}).items():
        view = next((v for v in views if v.name == view_name), None)
        if view is None:
            raise TrainingDataError(f"features selected for view {view_name!r}, which is not exported ({names})")
        unknown = [f for f in selected if f not in view.features]
        if unknown or not selected:
            raise TrainingDataError(f"view {view_name!r} has no feature(s) {unknown} (features: "
                                    f"{', '.join(view.feature_names)})" if unknown else f"no feature of {view_name!r} selected")
    label_cols = [c for label in labels for c in (*label.columns, label.weight_column)]
    if len(set(label_cols)) != len(label_cols):
        raise TrainingDataError(f"labels {[label.spec for label in labels]} give the same column twice; "
                                f"use one label per kind and horizon")
    exchange = store.resolve_exchange(views[0].timeframe, options.exchange) if labels else None
    stored = {view.name: set(store.stored_symbols(view.name, view.version)) for view in views}
    for view in views:  # raises VersionSkewError / "run backfill" before anything else
        read_features(store, view)
    frame = None
    if options.all_bars:
        chosen = sorted(stored[views[0].name]) if symbols is None else list(symbols)
    else:
        frame = read_entities(entities)
        if symbols is not None:
            frame = frame.filter(pl.col("symbol").is_in(list(symbols)))
        exported = {feature_column(v.name, f) for v in views for f in ("ts", *options.features_of(v))} | set(label_cols)
        chosen = check_entity_rows(frame, entities, exported=exported)
    for view in views:
        unknown = sorted(set(chosen) - stored[view.name])
        if unknown:
            raise TrainingDataError(f"no stored features of view {view.name!r} for symbol(s) {unknown}; stored: "
                                    f"{sorted(stored[view.name])} (run `featurestore backfill --view {view.name}`)")
    return _Plan(chosen, frame, ttl, exchange)


def training_set(store: Store, views: Sequence[FeatureView], entities: EntitySource | None = None, *,
                 options: ExportOptions | None = None) -> pl.DataFrame:
    """The point-in-time training set as one DataFrame (see the module docstring and ``iter_training_set``)."""
    options = ExportOptions() if options is None else options
    return _concat(list(iter_training_set(store, views, entities, options=options)), views, options)


def _concat(chunks: list[pl.DataFrame], views: Sequence[FeatureView], options: ExportOptions) -> pl.DataFrame:
    if chunks:
        return pl.concat(chunks, how="vertical_relaxed")
    schema: dict[str, pl.DataType] = {"symbol": pl.String(), "event_ts": EVENT_TS}
    for view in views:
        schema[feature_column(view.name, "ts")] = pl.Datetime("ms", "UTC")
        schema.update({feature_column(view.name, f): pl.Float64() for f in options.features_of(view)})
    return pl.concat([pl.DataFrame(schema=schema), empty_labels(options.labels)], how="horizontal")


@dataclass(frozen=True)
class ExportResult:
    """Where the training set went and what its sidecar says."""

    path: Path
    sidecar: Path
    rows: int
    meta: dict


def output_format(path: Path, format: str | None) -> str:
    if format is not None:
        if format not in EXPORT_FORMATS:
            raise TrainingDataError(f"unknown format {format!r}; use one of {', '.join(EXPORT_FORMATS)}")
        return format
    kind = SUFFIX_FORMAT.get(path.suffix.lower())
    if kind is None:
        raise TrainingDataError(f"cannot tell the format of {path} from its extension; name it .parquet, .csv or "
                                f".arrow, or pass --format")
    return kind


def _open_writer(kind: str, path: Path, schema: Any) -> Any:
    """A pyarrow writer (``write_table``, ``close``) for one output format."""
    import pyarrow.csv as pa_csv
    import pyarrow.ipc as pa_ipc
    import pyarrow.parquet as pq

    if kind == "parquet":  # dictionaries only for symbols: on float columns they cost 1.7x and grow the file
        return pq.ParquetWriter(path, schema, compression="zstd",
                                use_dictionary=[name for name in schema.names if name == "symbol"])
    return pa_ipc.new_file(path, schema) if kind == "arrow" else pa_csv.CSVWriter(path, schema)


def write_training_set(path: str | Path, store: Store, views: Sequence[FeatureView],
                       entities: EntitySource | None = None, *, options: ExportOptions | None = None,
                       format: ExportFormat | None = None, progress: bool = False) -> ExportResult:
    """Write the training set to ``path`` (parquet, CSV or Arrow IPC; ``format``, default from the suffix)
    symbol by symbol, atomically, then a sidecar ``<path>.json`` (views and versions, label specs, TTLs,
    row count, time range). ``progress``: a bar by symbol on a terminal."""
    path = Path(path)
    kind = output_format(path, format)
    options = ExportOptions() if options is None else options
    plan = _plan(store, views, entities, options)
    labels = options.labels
    rows, first, last, symbols, writer, pending = 0, None, None, [], None, None
    # One writer thread: symbol i is encoded and written (pyarrow releases the GIL) while symbol i+1 is read
    # and joined, so at most two symbols are in memory.
    with atomic_path(path) as tmp, ThreadPoolExecutor(max_workers=1, thread_name_prefix="export-writer") as pool:
        try:
            for chunk in _chunks(store, views, plan, options, progress):
                table = chunk.to_arrow()
                if writer is None:
                    schema, writer = table.schema, _open_writer(kind, tmp, table.schema)
                if pending is not None:
                    pending.result()
                pending = pool.submit(writer.write_table, table.cast(schema))
                rows += chunk.height
                symbols.append(chunk["symbol"][0])
                low, high = chunk["event_ts"].min(), chunk["event_ts"].max()
                first, last = min(first or low, low), max(last or high, high)
            if pending is not None:
                pending.result()
            if writer is None:  # no rows: still a readable file with the right columns
                empty = _concat([], views, options).to_arrow()
                writer = _open_writer(kind, tmp, empty.schema)
                writer.write_table(empty)
        finally:
            if pending is not None:
                wait([pending])  # never close the writer under a write; an error was raised above
            if writer is not None:
                writer.close()
    meta = {
        "path": path.name, "format": kind, "rows": rows, "symbols": symbols,
        "time_range": {"first_event_ts": first.isoformat() if first else None,
                       "last_event_ts": last.isoformat() if last else None},
        "entities": "all-bars" if options.all_bars else str(entities),
        "as_of_created": bool(options.as_of_created),
        "views": [{"name": v.name, "version": v.version, "timeframe": v.timeframe,
                   "ttl_seconds": plan.ttl[v.name].total_seconds(),
                   "columns": [feature_column(v.name, f) for f in options.features_of(v)]} for v in views],
        "labels": [{"spec": label.spec, "columns": [*label.columns, label.weight_column]} for label in labels],
        "label_bars": {"timeframe": views[0].timeframe} if labels else None,
        "column_naming": "<view>__<feature>; <view>__ts is the ts of the joined feature row",
    }
    sidecar = path.with_name(path.name + ".json")
    write_bytes_atomic(json.dumps(meta, indent=1).encode(), sidecar)
    return ExportResult(path, sidecar, rows, meta)

