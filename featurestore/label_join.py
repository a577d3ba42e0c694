"""Labels on training rows: what the export needs of a label, and how a label meets an entity row.

A label (``Label``; ``training.labels.LabelSpec`` is one) is computed from one symbol's bars of the
first view's timeframe: one row per bar, stamped at the bar's close. ``attach_labels`` gives each entity
row the label of the last bar closed by its ``event_ts``, an as-of join with tolerance one timeframe minus
1 us (a bar that closed a whole bar or more before ``event_ts`` is too old), and then the label's sample
weight over the exported rows (``Label.weights``: average uniqueness, ``docs/point-in-time.md``). Columns
per label: ``label.columns`` and ``label.weight_column``.

>>> from datetime import datetime, timedelta, timezone
>>> import numpy as np
>>> import polars as pl
>>> class NextClose:  # the next bar's close, on this bar; weight 1 where the label ends
...     name, spec, end_column, weight_column = "next", "next", "next__end_ts", "next__weight"
...     columns = ["next", "next__end_ts"]
...     def compute(self, bars, timeframe):
...         close_ts = pl.col("ts") + pl.duration(hours=1)
...         return bars.select(close_ts, pl.col("close").shift(-1).alias("next"),
...                            pl.when(pl.col("close").shift(-1).is_not_null()).then(close_ts + pl.duration(hours=1))
...                            .alias("next__end_ts"))
...     def weights(self, start, end, grid):
...         return np.where(np.isnan(end), np.nan, 1.0)
>>> utc = lambda h, m=0: datetime(2024, 1, 1, h, m, tzinfo=timezone.utc)
>>> bars = pl.DataFrame({"ts": [utc(0), utc(1), utc(2)], "open": [1.0] * 3, "high": [1.0] * 3, "low": [1.0] * 3,
...                      "close": [10.0, 11.0, 12.0], "volume": [1.0] * 3})
>>> rows = pl.DataFrame({"symbol": ["A"] * 4, "event_ts": [utc(0, 30), utc(1, 30), utc(2), utc(2, 59)]})
>>> attach_labels(rows, bars, [NextClose()], "1h").select("next", "next__weight").rows()
[(None, None), (11.0, 1.0), (12.0, 1.0), (12.0, 1.0)]
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Protocol

import numpy as np
import polars as pl

from featurestore.bars import PRICE_COLUMNS, TS_DTYPE
from featurestore.pit_join import feature_column, point_in_time_join
from featurestore.timeframes import timeframe_ms

__all__ = ["LABEL_BAR_COLUMNS", "Label", "attach_labels", "empty_labels"]

LABEL_BAR_COLUMNS = ("ts", *PRICE_COLUMNS, "volume")
"""The bar columns a label is computed from."""


class Label(Protocol):
    """What the export needs of a label (``training.labels.LabelSpec`` is one)."""

    name: str
    spec: str
    columns: list[str]
    end_column: str
    weight_column: str

    def compute(self, bars: pl.DataFrame, timeframe: str) -> pl.DataFrame: ...

    def weights(self, start: np.ndarray, end: np.ndarray, grid: np.ndarray) -> np.ndarray: ...


def attach_labels(frame: pl.DataFrame, bars: pl.DataFrame, labels: Sequence[Label], timeframe: str) -> pl.DataFrame:
    """Labels of the last bar closed by each ``event_ts`` (strictly less than one bar earlier), plus weights.

    ``frame`` holds the entity rows of one symbol, sorted by ``event_ts``; ``bars`` that symbol's bars
    (``LABEL_BAR_COLUMNS``, sorted by ``ts``) of ``timeframe``.
    """
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


def empty_labels(labels: Sequence[Label]) -> pl.DataFrame:
    """No rows, with the columns (and types) ``attach_labels`` adds for ``labels``."""
    bars = pl.DataFrame(schema={"ts": TS_DTYPE, **dict.fromkeys(LABEL_BAR_COLUMNS[1:], pl.Float64())})
    return pl.concat([pl.DataFrame(), *(label.compute(bars, "1m").drop("ts").with_columns(
        pl.lit(None, pl.Float64).alias(label.weight_column)) for label in labels)], how="horizontal")
