"""The record of stored bars built from incomplete periods (``featurestore ingest --source resample
--allow-partial``): a file beside each series, ``kind=bars/.../symbol=<s>/partial-bars.json``, with one entry
per such bar: its open time, the fine timeframe it was resampled from, how many fine bars it holds and how
many make a complete period.

A recorded bar is provisional: an incoming bar for the same ``ts`` replaces it instead of being refused as a
conflict, and its entry goes once the incoming bar is complete (``Store.write_bars``). ``featurestore
validate`` lists every recorded bar. The file is written atomically and removed when the record is empty.

>>> import tempfile
>>> from datetime import datetime, timezone
>>> from featurestore.layout import BarSeries, Layout
>>> layout, series = Layout(tempfile.mkdtemp()), BarSeries("synthetic", "1d", "BTC/USDT")
>>> day = datetime(2024, 1, 1, tzinfo=timezone.utc)
>>> write_partial_bars(layout, series, partial_frame([(day, "1h", 12, 24)]))
>>> read_partial_bars(layout, series).rows()
[(datetime.datetime(2024, 1, 1, 0, 0, tzinfo=zoneinfo.ZoneInfo(key='UTC')), '1h', 12, 24)]
>>> write_partial_bars(layout, series, partial_frame([]))
>>> layout.partial_bars_file(series).exists(), read_partial_bars(layout, series).height
(False, 0)
"""

from __future__ import annotations

import json
from datetime import datetime

import polars as pl

from featurestore.atomic import write_bytes_atomic
from featurestore.bars import TS_DTYPE
from featurestore.errors import FeatureStoreError
from featurestore.layout import BarSeries, Layout

__all__ = ["PARTIAL_SCHEMA", "partial_frame", "read_partial_bars", "write_partial_bars"]

#: One row per recorded bar (a ``symbol`` column first where several series are meant).
PARTIAL_SCHEMA = {"ts": TS_DTYPE, "from_timeframe": pl.String(), "fine_bars": pl.Int64(), "expected": pl.Int64()}


def partial_frame(rows: list[tuple[datetime, str, int, int]]) -> pl.DataFrame:
    """Rows ``(ts, from_timeframe, fine_bars, expected)`` as a record, sorted by ``ts``."""
    return pl.DataFrame(rows, schema=PARTIAL_SCHEMA, orient="row").sort("ts")


def read_partial_bars(layout: Layout, series: BarSeries) -> pl.DataFrame:
    """The series' recorded bars (empty when there are none)."""
    path = layout.partial_bars_file(series)
    if not path.exists():
        return partial_frame([])
    try:
        entries = json.loads(path.read_bytes())["bars"]
        return partial_frame([(datetime.fromisoformat(e["ts"]), e["from_timeframe"], int(e["fine_bars"]),
                               int(e["expected"])) for e in entries])
    except (ValueError, KeyError, TypeError) as exc:
        raise FeatureStoreError(f"{path}: unreadable record of partial bars ({exc}); it lists the {series.timeframe} "
                                f"bars of {series.symbol} built from incomplete periods") from None


def write_partial_bars(layout: Layout, series: BarSeries, record: pl.DataFrame) -> None:
    """Replace the series' record with ``record`` (``PARTIAL_SCHEMA`` columns); an empty one removes the file."""
    path = layout.partial_bars_file(series)
    if record.is_empty():
        path.unlink(missing_ok=True)
        return
    entries = [{"ts": row["ts"].isoformat(), "from_timeframe": row["from_timeframe"], "fine_bars": row["fine_bars"],
                "expected": row["expected"]} for row in record.sort("ts").iter_rows(named=True)]
    document = {"exchange": series.exchange, "timeframe": series.timeframe, "symbol": series.symbol, "bars": entries}
    write_bytes_atomic(json.dumps(document, indent=1).encode(), path)
