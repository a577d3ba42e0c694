"""What a model would have read at a past moment: its views' rows as of that moment, from the offline store.

Scoring a replayed bar at ``t`` must not read the online store, which holds the newest rows (after ``t``),
but each view's row as the training join saw it: the row with the greatest ``ts <= t``, when ``t - ts`` is
within the view's max age (the scorer's: by default the TTL the training join used), else none, as the
join would have given nulls (``featurestore.pit_join``). ``OfflineRows`` answers that from the offline
store, reading each (view, symbol) once, the rows the model uses of the version it was trained on,
between ``start`` minus the max age and ``end``.

>>> import tempfile
>>> from datetime import datetime, timedelta, timezone
>>> from featurestore.backfill import backfill
>>> from featurestore.builtin_views import DAILY_TREND
>>> from featurestore.ingest import ingest_synthetic
>>> store = Store(tempfile.mkdtemp())
>>> now = datetime(2024, 3, 1, tzinfo=timezone.utc)
>>> _ = ingest_synthetic(store, ["BTC/USDT"], "1d", since=datetime(2024, 1, 1, tzinfo=timezone.utc), until=now, now=now)
>>> _ = backfill(store, DAILY_TREND, now=now, progress=False)
>>> history = OfflineRows(store, {"daily_trend": DAILY_TREND.version}, {"daily_trend": ["atr_14"]},
...                       max_age={"daily_trend": timedelta(days=1)})
>>> row = history.rows("BTC/USDT", datetime(2024, 2, 10, 13, tzinfo=timezone.utc))["daily_trend"]
>>> row.ts.isoformat(), list(row.features)
('2024-02-10T00:00:00+00:00', ['atr_14'])
>>> history.rows("BTC/USDT", datetime(2024, 5, 1, tzinfo=timezone.utc))  # the newest row is older than a day
{}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl

from featurestore.errors import FeatureStoreError
from featurestore.offline import read_features
from featurestore.online import OnlineRow
from featurestore.registry import resolve_view
from featurestore.store import Store

__all__ = ["OfflineRows"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


class OfflineRows:
    """Rows of ``versions`` (view -> the version a model was trained on; ``features``: view -> the features it
    reads) as of past moments. ``max_age``: per view, how old a row may be at the moment asked about."""

    def __init__(self, store: Store, versions: Mapping[str, str], features: Mapping[str, Sequence[str]], *,
                 max_age: Mapping[str, timedelta], start: datetime | None = None, end: datetime | None = None) -> None:
        self.store, self.versions, self.max_age = store, dict(versions), dict(max_age)
        self.features = {view: list(features[view]) for view in self.versions}
        self.views = {view: resolve_view(store, f"{view}@{version}") for view, version in self.versions.items()}
        self.start, self.end = start, end
        self._tables: dict[tuple[str, str], tuple[np.ndarray, pl.DataFrame]] = {}

    def _table(self, view: str, symbol: str) -> tuple[np.ndarray, pl.DataFrame]:
        """The rows of ``view`` for ``symbol`` in the window, by ts, and their times in epoch microseconds."""
        key = (view, symbol)
        if key not in self._tables:
            try:
                rows = read_features(self.store, self.views[view], symbols=[symbol], version=self.versions[view])
            except FeatureStoreError:  # nothing stored for this symbol: every moment finds no row
                rows = None
            if rows is not None and self.start is not None:
                rows = rows.filter(pl.col("ts") >= self.start - self.max_age[view])
            if rows is not None and self.end is not None:
                rows = rows.filter(pl.col("ts") <= self.end)
            frame = (rows.select("ts", "created_at", *self.features[view]).sort("ts").collect() if rows is not None
                     else pl.DataFrame(schema={"ts": pl.Datetime("us", "UTC")}))
            self._tables[key] = (frame["ts"].dt.epoch("us").to_numpy(), frame)
        return self._tables[key]

    def rows(self, symbol: str, moment: datetime) -> dict[str, OnlineRow]:
        """Per view, the row a training join at ``moment`` would have used (views without one left out)."""
        found = {}
        at = (moment - _EPOCH) // _US
        for view, version in self.versions.items():
            times, frame = self._table(view, symbol)
            i = int(np.searchsorted(times, at, side="right")) - 1
            if i < 0 or at - int(times[i]) > self.max_age[view] // _US:
                continue
            ts, created, *values = frame.row(i)
            found[view] = OnlineRow(view, symbol, ts, version, dict(zip(self.features[view], values, strict=True)),
                                    created)
        return found
