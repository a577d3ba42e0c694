"""Point-in-time training sets: feature views joined as of each entity row, plus labels.

Rules (``docs/point-in-time.md``): for an entity row ``(symbol, event_ts)`` each view contributes
its feature row with the greatest ``ts <= event_ts`` for that symbol, provided ``event_ts - ts <= ttl``
(default: one timeframe of the view); otherwise its features are null. With ``as_of_created`` a stored
row whose ``created_at > event_ts`` does not exist for that entity (the join falls back to an older
row, within the TTL). The join is polars' ``join_asof`` (backward, ``by="symbol"``, ``tolerance=ttl``),
run one symbol at a time so memory holds one symbol's rows.

Column naming: feature ``f`` of view ``v`` is ``v__f`` (always, also for a single view, so a model's
feature names do not change when views are added), ``v__ts`` is the ``ts`` of the matched row. Labels
(any object with ``name``, ``spec``, ``columns``, ``end_column``, ``weight_column``,
``compute(bars, timeframe)`` and ``weights(start, end, grid)``, e.g. ``training.labels.LabelSpec``) are computed on the bars of the
first view's timeframe and attached to the last bar closed by ``event_ts`` (``event_ts - close < one
timeframe``), with a sample-uniqueness weight over the exported rows. Output rows are sorted by
``(symbol, event_ts)``, ties in input order; ``event_ts`` is ``Datetime("us", "UTC")``.

>>> from datetime import datetime, timedelta, timezone
>>> import polars as pl
>>> utc = lambda h, m=0: datetime(2024, 1, 1, h, m, tzinfo=timezone.utc)
>>> entities = pl.DataFrame({"symbol": ["A", "A", "A"], "event_ts": [utc(0, 30), utc(1), utc(3)]})
>>> features = pl.DataFrame({"symbol": ["A", "A"], "ts": [utc(1), utc(2)], "x": [1.0, 2.0],
...                          "created_at": [utc(5), utc(5)]})
>>> out = point_in_time_join(entities, features, view="v", features=["x"], ttl=timedelta(hours=1))
>>> out["v__x"].to_list()
[None, 1.0, 2.0]
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import polars as pl

from featurestore.atomic import atomic_path, write_bytes_atomic
from featurestore.definitions import FeatureView
from featurestore.durations import parse_ttl
from featurestore.errors import TrainingDataError
from featurestore.offline import read_features
from featurestore.store import Store
from featurestore.timeframes import timeframe_ms

__all__ = [
    "EXPORT_FORMATS",
    "ExportResult",
    "Label",
    "feature_column",
    "iter_training_set",
    "output_format",
    "point_in_time_join",
    "read_entities",
    "training_set",
    "write_training_set",
]

ExportFormat = Literal["parquet", "csv", "arrow"]
EXPORT_FORMATS: tuple[str, ...] = ("parquet", "csv", "arrow")
_SUFFIX_FORMAT = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".arrow": "arrow", ".feather": "arrow",
                  ".ipc": "arrow"}
EVENT_TS = pl.Datetime("us", "UTC")


class Label(Protocol):
    """What the export needs of a label (``training.labels.LabelSpec`` is one)."""

    name: str
    spec: str
    columns: list[str]
    end_column: str
    weight_column: str

    def compute(self, bars: pl.DataFrame, timeframe: str) -> pl.DataFrame: ...

    def weights(self, start: np.ndarray, end: np.ndarray, grid: np.ndarray) -> np.ndarray: ...


def feature_column(view: str, feature: str) -> str:
    """The training-set column of ``feature`` of ``view``: ``view__feature``."""
    return f"{view}__{feature}"


def _check_entities(frame: pl.DataFrame | pl.LazyFrame, source: str) -> pl.LazyFrame:
    schema = frame.collect_schema()
    missing = [c for c in ("symbol", "event_ts") if c not in schema]
    if missing:
        raise TrainingDataError(f"entity file {source}: missing column(s) {missing}; it needs `symbol` (string) and "
                                f"`event_ts` (timezone-aware timestamp), has {list(schema)}")
    ts = schema["event_ts"]
    if not isinstance(ts, pl.Datetime):
        raise TrainingDataError(f"entity file {source}: column `event_ts` must be a timezone-aware timestamp, got {ts}"
                                + (" (text that does not parse as ISO-8601 with an offset, e.g. 2024-01-01T00:00:00Z)"
                                   if isinstance(ts, pl.String) else ""))
    if ts.time_zone is None:
        raise TrainingDataError(f"entity file {source}: column `event_ts` has naive timestamps (no time zone); "
                                f"write them in UTC with an offset, e.g. 2024-01-01T00:00:00Z")
    if not isinstance(schema["symbol"], pl.String):
        raise TrainingDataError(f"entity file {source}: column `symbol` must be a string, got {schema['symbol']}")
    return frame.lazy().with_columns(pl.col("event_ts").dt.convert_time_zone("UTC").cast(EVENT_TS))


def read_entities(entities: str | Path | pl.DataFrame | pl.LazyFrame) -> pl.LazyFrame:
    """An entity table (parquet, CSV or Arrow file, or a frame) checked and with ``event_ts`` in UTC (us)."""
    if isinstance(entities, pl.DataFrame | pl.LazyFrame):
        return _check_entities(entities, "(frame)")
    path = Path(entities)
    if not path.is_file():
        raise TrainingDataError(f"entity file {path} does not exist")
    kind = _SUFFIX_FORMAT.get(path.suffix.lower())
    try:
        if kind == "parquet":
            frame = pl.scan_parquet(path)
        elif kind == "arrow":
            frame = pl.scan_ipc(path)
        elif kind == "csv":
            frame = pl.scan_csv(path, try_parse_dates=True)
        else:
            raise TrainingDataError(f"entity file {path}: unknown format {path.suffix!r}; use .parquet, .csv or .arrow")
        frame.collect_schema()
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise TrainingDataError(f"entity file {path}: cannot be read: {exc}") from None
    return _check_entities(frame, str(path))


def point_in_time_join(entities: pl.DataFrame, rows: pl.DataFrame, *, view: str, features: Sequence[str],
                       ttl: timedelta, as_of_created: bool = False) -> pl.DataFrame:
    """Join the feature ``rows`` of one view (``symbol, ts, *features, created_at``) as of each entity row.

    Adds ``view__ts`` and ``view__<feature>``; keeps the entity rows and their order.
    """
    out_cols = [feature_column(view, "ts"), *(feature_column(view, f) for f in features)]
    left = entities.with_row_index("__row").with_columns(pl.col("event_ts").cast(EVENT_TS).alias("__key"))
    right = rows.select(
        "symbol", pl.col("ts").cast(EVENT_TS).alias("__key"), pl.col("ts").alias(out_cols[0]),
        *(pl.col(f).alias(c) for f, c in zip(features, out_cols[1:], strict=True)),
        *(["created_at"] if as_of_created else []),
    )
    right = _by_symbol_and_key(right)
    if not as_of_created:
        joined = _asof(left, right, ttl)
    else:
        cutoffs = right["created_at"].unique().sort()
        bucket = pl.Series(np.searchsorted(cutoffs.to_numpy(), left["__key"].to_numpy(), side="right") - 1)
        parts = []
        for (index,), part in left.with_columns(__bucket=bucket).partition_by("__bucket", as_dict=True).items():
            visible = right.filter(pl.col("created_at") <= cutoffs[index]) if index >= 0 else right.clear()
            parts.append(_asof(part.drop("__bucket"), visible.drop("created_at"), ttl))
        joined = pl.concat(parts) if parts else _asof(left, right.drop("created_at"), ttl)
    return (joined if joined["__row"].is_sorted() else joined.sort("__row")).drop("__row", "__key")


def _by_symbol_and_key(frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` sorted by (symbol, __key), stable; as it is when it already is (one symbol, keys in order: the
    export's case, where a re-sort of every column took 40% of the join)."""
    if _one_symbol(frame) and frame["__key"].is_sorted():
        return frame
    return frame.sort("symbol", "__key", maintain_order=True)


def _one_symbol(frame: pl.DataFrame) -> bool:
    """Every row has the same (non-null) symbol; 6x cheaper than ``n_unique`` on strings."""
    symbol = frame["symbol"]
    return symbol.is_empty() or (symbol.null_count() == 0 and bool((symbol == symbol[0]).all()))


def _asof(left: pl.DataFrame, right: pl.DataFrame, ttl: timedelta) -> pl.DataFrame:
    """``right`` must be sorted by (symbol, __key)."""
    options = {"on": "__key", "strategy": "backward", "tolerance": ttl, "check_sortedness": False}
    if (left.height and right.height and left["symbol"][0] == right["symbol"][0] and _one_symbol(left)
            and _one_symbol(right)):  # one symbol on both sides: ordered by key alone, no `by` (3x faster)
        left = left if left["__key"].is_sorted() else left.sort("__key", maintain_order=True)
        return left.join_asof(right.drop("symbol"), **options)
    return left.sort("symbol", "__key", maintain_order=True).join_asof(right, by="symbol", **options)


def _attach_labels(frame: pl.DataFrame, bars: pl.DataFrame, labels: Sequence[Label], timeframe: str) -> pl.DataFrame:
    """Labels of the last bar closed by each ``event_ts`` (strictly less than one bar earlier), plus weights."""
    step = timedelta(milliseconds=timeframe_ms(timeframe))
    grid = bars.select((pl.col("ts") + step).dt.epoch("us")).to_series().cast(pl.Float64).to_numpy()
    start = frame["event_ts"].dt.epoch("us").cast(pl.Float64).to_numpy()
    for label in labels:
        computed = label.compute(bars, timeframe).with_columns(symbol=pl.lit(frame["symbol"][0]))
        joined = point_in_time_join(frame.select("symbol", "event_ts"), computed, view="__label",
                                    features=label.columns, ttl=step - timedelta(microseconds=1))
        values = joined.select(pl.col(feature_column("__label", c)).alias(c) for c in label.columns)
        end = values[label.end_column].dt.epoch("us").cast(pl.Float64).fill_null(np.nan).to_numpy()
        weight = pl.Series(label.weight_column, label.weights(start, end, grid)).fill_nan(None)
        frame = frame.with_columns(values).with_columns(weight)
    return frame


def iter_training_set(store: Store, views: Sequence[FeatureView], entities: Any = None, *, all_bars: bool = False,
                      labels: Sequence[Label] = (), ttl: dict[str, timedelta] | None = None,
                      as_of_created: bool = False, symbols: Sequence[str] | None = None,
                      start: datetime | None = None, end: datetime | None = None,
                      exchange: str | None = None) -> Iterator[pl.DataFrame]:
    """``training_set`` one symbol at a time (memory holds one symbol's entities, features and bars)."""
    plan = _plan(store, views, entities, all_bars=all_bars, labels=labels, ttl=ttl, symbols=symbols,
                 exchange=exchange)
    first = views[0]
    for symbol in plan.symbols:
        if all_bars:
            rows = read_features(store, first, symbols=[symbol]).select("symbol", "ts")
            rows = _window(rows, start, end).collect()
            chunk = rows.select("symbol", pl.col("ts").cast(EVENT_TS).alias("event_ts"))
        else:
            chunk = _window(plan.entities.filter(pl.col("symbol") == symbol), start, end, "event_ts").collect()
        if chunk.is_empty():
            continue
        chunk = chunk.with_row_index("__order").sort("event_ts", "__order").drop("__order")
        low, high = chunk["event_ts"].min(), chunk["event_ts"].max()
        for view in views:
            rows = read_features(store, view, symbols=[symbol]).filter(
                pl.col("ts").is_between(low - plan.ttl[view.name], high))
            rows = rows.select("symbol", "ts", *view.feature_names, "created_at").collect()
            chunk = point_in_time_join(chunk, rows, view=view.name, features=view.feature_names,
                                       ttl=plan.ttl[view.name], as_of_created=as_of_created)
        if labels:
            bars = store.scan_bars(plan.exchange, first.timeframe, [symbol]).select(
                "ts", "open", "high", "low", "close", "volume").collect()
            chunk = _attach_labels(chunk, bars, labels, first.timeframe)
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


def _plan(store: Store, views: Sequence[FeatureView], entities: Any, *, all_bars: bool, labels: Sequence[Label],
          ttl: dict[str, timedelta] | None, symbols: Sequence[str] | None, exchange: str | None = None) -> _Plan:
    """Check everything that can be checked before any row is read or written."""
    if not views:
        raise TrainingDataError("give at least one feature view")
    names = [view.name for view in views]
    if len(set(names)) != len(names):
        raise TrainingDataError(f"view listed twice: {names}")
    if all_bars == (entities is not None):
        raise TrainingDataError("give either an entity file or all_bars (--entities FILE or --all-bars), not both or neither")
    ttl = {**parse_ttl(None, views), **(ttl or {})}
    label_cols = [c for label in labels for c in (*label.columns, label.weight_column)]
    if len(set(label_cols)) != len(label_cols):
        raise TrainingDataError(f"labels {[label.spec for label in labels]} give the same column twice; "
                                f"use one label per kind and horizon")
    exchange = store.resolve_exchange(views[0].timeframe, exchange) if labels else None
    stored = {view.name: set(store.stored_symbols(view.name, view.version)) for view in views}
    for view in views:  # raises VersionSkewError / "run backfill" before anything else
        read_features(store, view)
    frame = None
    if all_bars:
        chosen = sorted(stored[views[0].name]) if symbols is None else list(symbols)
    else:
        frame = read_entities(entities)
        if symbols is not None:
            frame = frame.filter(pl.col("symbol").is_in(list(symbols)))
        exported = {feature_column(v.name, f) for v in views for f in ("ts", *v.feature_names)} | set(label_cols)
        clashes = sorted(set(frame.collect_schema()) & exported)
        if clashes:
            raise TrainingDataError(f"entity file {entities}: column(s) {clashes} clash with exported columns; rename them")
        nulls = frame.select(pl.col("symbol", "event_ts").null_count()).collect().row(0)
        if any(nulls):
            raise TrainingDataError(f"entity file {entities}: {nulls[0]} null symbol(s) and {nulls[1]} null or "
                                    f"unparseable event_ts value(s); every row needs both")
        chosen = sorted(frame.select(pl.col("symbol").unique()).collect()["symbol"].to_list())
    for view in views:
        unknown = sorted(set(chosen) - stored[view.name])
        if unknown:
            raise TrainingDataError(f"no stored features of view {view.name!r} for symbol(s) {unknown}; stored: "
                                    f"{sorted(stored[view.name])} (run `featurestore backfill --view {view.name}`)")
    return _Plan(chosen, frame, ttl, exchange)


def training_set(store: Store, views: Sequence[FeatureView], entities: Any = None, **options: Any) -> pl.DataFrame:
    """The point-in-time training set as one DataFrame (see the module docstring and ``iter_training_set``)."""
    return _concat(list(iter_training_set(store, views, entities, **options)), views, options.get("labels", ()))


def _concat(chunks: list[pl.DataFrame], views: Sequence[FeatureView], labels: Sequence[Label]) -> pl.DataFrame:
    if chunks:
        return pl.concat(chunks, how="vertical_relaxed")
    schema: dict[str, pl.DataType] = {"symbol": pl.String(), "event_ts": EVENT_TS}
    for view in views:
        schema[feature_column(view.name, "ts")] = pl.Datetime("ms", "UTC")
        schema.update({feature_column(view.name, f): pl.Float64() for f in view.feature_names})
    frame = pl.DataFrame(schema=schema)
    bars = pl.DataFrame(schema={"ts": pl.Datetime("ms", "UTC"), **dict.fromkeys(
        ("open", "high", "low", "close", "volume"), pl.Float64())})
    for label in labels:
        frame = pl.concat([frame, label.compute(bars, "1m").drop("ts")], how="horizontal").with_columns(
            pl.lit(None, pl.Float64).alias(label.weight_column))
    return frame


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
    kind = _SUFFIX_FORMAT.get(path.suffix.lower())
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


def write_training_set(path: str | Path, store: Store, views: Sequence[FeatureView], entities: Any = None, *,
                       format: ExportFormat | None = None, labels: Sequence[Label] = (), **options: Any) -> ExportResult:
    """Write the training set to ``path`` (parquet, CSV or Arrow IPC) symbol by symbol, atomically, then a
    sidecar ``<path>.json`` (views and versions, label specs, TTLs, row count, time range)."""
    path = Path(path)
    kind = output_format(path, format)
    ttl = {**parse_ttl(None, views), **(options.get("ttl") or {})}
    rows, first, last, symbols, writer, pending = 0, None, None, [], None, None
    # One writer thread: symbol i is encoded and written (pyarrow releases the GIL) while symbol i+1 is read
    # and joined, so at most two symbols are in memory.
    with atomic_path(path) as tmp, ThreadPoolExecutor(max_workers=1, thread_name_prefix="export-writer") as pool:
        try:
            for chunk in iter_training_set(store, views, entities, labels=labels, **options):
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
                empty = _concat([], views, labels).to_arrow()
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
        "entities": "all-bars" if options.get("all_bars") else str(entities),
        "as_of_created": bool(options.get("as_of_created")),
        "views": [{"name": v.name, "version": v.version, "timeframe": v.timeframe,
                   "ttl_seconds": ttl[v.name].total_seconds(),
                   "columns": [feature_column(v.name, f) for f in v.feature_names]} for v in views],
        "labels": [{"spec": label.spec, "columns": [*label.columns, label.weight_column]} for label in labels],
        "label_bars": {"timeframe": views[0].timeframe} if labels else None,
        "column_naming": "<view>__<feature>; <view>__ts is the ts of the joined feature row",
    }
    sidecar = path.with_name(path.name + ".json")
    write_bytes_atomic(json.dumps(meta, indent=1).encode(), sidecar)
    return ExportResult(path, sidecar, rows, meta)

