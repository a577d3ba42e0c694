"""Entity tables: the rows a training set is built for, one ``(symbol, event_ts)`` each.

An entity table has ``symbol`` (string) and ``event_ts`` (timezone-aware), and any other columns,
which the training set keeps. It comes from a parquet, CSV or Arrow file, or a polars frame.
``read_entities`` checks the two columns (the file is named in every error) and converts ``event_ts``
to ``EVENT_TS``, ``Datetime("us", "UTC")``; ``check_entity_rows`` then refuses nulls and columns that
clash with the exported ones, and gives the symbols present (``docs/point-in-time.md``).

>>> from datetime import datetime, timezone, timedelta
>>> import polars as pl
>>> paris = timezone(timedelta(hours=1))
>>> frame = pl.DataFrame({"symbol": ["B", "A"], "event_ts": [datetime(2024, 1, 1, 1, tzinfo=paris)] * 2,
...                       "note": ["x", "y"]})
>>> entities = read_entities(frame)
>>> entities.collect()["event_ts"].to_list()
[datetime.datetime(2024, 1, 1, 0, 0, tzinfo=zoneinfo.ZoneInfo(key='UTC')), ...]
>>> check_entity_rows(entities, "(frame)", exported={"v__x"})
['A', 'B']
>>> check_entity_rows(entities, "(frame)", exported={"note"})
Traceback (most recent call last):
...
featurestore.errors.TrainingDataError: entity file (frame): column(s) ['note'] clash with exported columns; rename them
"""

from __future__ import annotations

from collections.abc import Set
from pathlib import Path

import polars as pl

from featurestore.errors import TrainingDataError

__all__ = ["EVENT_TS", "SUFFIX_FORMAT", "EntitySource", "check_entity_rows", "read_entities"]

EVENT_TS = pl.Datetime("us", "UTC")
"""The type of ``event_ts`` in entity tables and training sets."""
SUFFIX_FORMAT = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".arrow": "arrow", ".feather": "arrow",
                 ".ipc": "arrow"}
"""Table formats by file suffix, for entity files and training-set files alike."""
EntitySource = str | Path | pl.DataFrame | pl.LazyFrame


def read_entities(entities: EntitySource) -> pl.LazyFrame:
    """An entity table (parquet, CSV or Arrow file, or a frame) checked and with ``event_ts`` in UTC (us)."""
    if isinstance(entities, pl.DataFrame | pl.LazyFrame):
        return _check_columns(entities, "(frame)")
    path = Path(entities)
    if not path.is_file():
        raise TrainingDataError(f"entity file {path} does not exist")
    kind = SUFFIX_FORMAT.get(path.suffix.lower())
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
    return _check_columns(frame, str(path))


def check_entity_rows(frame: pl.LazyFrame, source: object, *, exported: Set[str]) -> list[str]:
    """The sorted symbols of the entity rows ``frame`` (from ``read_entities``), after refusing a column that
    clashes with the ``exported`` names and any row without a symbol or an ``event_ts``."""
    clashes = sorted(set(frame.collect_schema()) & exported)
    if clashes:
        raise TrainingDataError(f"entity file {source}: column(s) {clashes} clash with exported columns; rename them")
    nulls = frame.select(pl.col("symbol", "event_ts").null_count()).collect().row(0)
    if any(nulls):
        raise TrainingDataError(f"entity file {source}: {nulls[0]} null symbol(s) and {nulls[1]} null or "
                                f"unparseable event_ts value(s); every row needs both")
    return sorted(frame.select(pl.col("symbol").unique()).collect()["symbol"].to_list())


def _check_columns(frame: pl.DataFrame | pl.LazyFrame, source: str) -> pl.LazyFrame:
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
