"""Coarser bars from finer stored bars (e.g. 1d from 1m): open first, high max, low min, close last,
volume summed. A coarse bar is produced only once the fine history covers its whole period, so a
later fine bar can never change a coarse bar that was already stored.

>>> import polars as pl
>>> from datetime import datetime, timezone
>>> ts = [datetime(2024, 1, 1, h, tzinfo=timezone.utc) for h in range(24)] + [datetime(2024, 1, 2, tzinfo=timezone.utc)]
>>> hourly = pl.DataFrame({"symbol": "X", "ts": ts, "open": 1.0, "high": 2.0, "low": 0.5, "close": 1.5, "volume": 1.0})
>>> resample_bars(hourly, "1h", "1d").select("ts", "volume").rows()  # 2024-01-02 is not complete yet
[(datetime.datetime(2024, 1, 1, 0, 0, tzinfo=zoneinfo.ZoneInfo(key='UTC')), 24.0)]
"""

from __future__ import annotations

import polars as pl

from featurestore.bars import TS_DTYPE
from featurestore.errors import FeatureStoreError
from featurestore.timeframes import timeframe_ms

__all__ = ["resample_bars"]


def resample_bars(bars: pl.DataFrame | pl.LazyFrame, from_timeframe: str, to_timeframe: str) -> pl.DataFrame:
    """Aggregate bars sorted by ``(symbol, ts)`` into ``to_timeframe`` bars whose period is fully covered."""
    fine, coarse = timeframe_ms(from_timeframe), timeframe_ms(to_timeframe)
    if coarse <= fine or coarse % fine:
        raise FeatureStoreError(f"cannot resample {from_timeframe} bars to {to_timeframe}: the target must be a "
                                f"multiple of the source timeframe")
    covered_until = pl.col("ts").max().over("symbol") + pl.duration(milliseconds=fine)
    return (
        bars.lazy()
        .with_columns(covered_until=covered_until)
        .group_by_dynamic("ts", every=to_timeframe, group_by="symbol",
                          start_by="monday" if to_timeframe.endswith("w") else "window")
        .agg(pl.col("open").first(), pl.col("high").max(), pl.col("low").min(), pl.col("close").last(),
             pl.col("volume").sum(), pl.col("covered_until").first())
        .filter(pl.col("ts") + pl.duration(milliseconds=coarse) <= pl.col("covered_until"))
        .select("symbol", pl.col("ts").cast(TS_DTYPE), "open", "high", "low", "close", "volume")
        .sort("symbol", "ts")
        .collect()
    )
