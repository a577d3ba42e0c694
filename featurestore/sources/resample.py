"""Coarser bars from finer stored bars (e.g. 1d from 1m): open first, high max, low min, close last,
volume summed over the fine bars stored in the coarse bar's period. Periods lie on the bar grid of
``featurestore.timeframes`` (multiples of the timeframe since the epoch; weeks since a Monday). A coarse
bar is produced only once the newest fine bar has closed at or after its end, so later fine bars never
change a coarse bar that was already stored.

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
from featurestore.timeframes import offset_ms, timeframe_ms

__all__ = ["resample_bars"]


def resample_bars(bars: pl.DataFrame | pl.LazyFrame, from_timeframe: str, to_timeframe: str) -> pl.DataFrame:
    """Aggregate bars sorted by ``(symbol, ts)`` into ``to_timeframe`` bars whose period is fully covered."""
    fine, coarse = timeframe_ms(from_timeframe), timeframe_ms(to_timeframe)
    if coarse <= fine or coarse % fine:
        raise FeatureStoreError(f"cannot resample {from_timeframe} bars to {to_timeframe}: the target must be a "
                                f"multiple of the source timeframe")
    offset, epoch_ms = offset_ms(to_timeframe), pl.col("ts").dt.epoch("ms")
    return (
        bars.lazy()
        .with_columns(covered_until=epoch_ms.max().over("symbol") + fine, grid_ms=epoch_ms - offset)
        # windows [k * coarse, (k + 1) * coarse) of the grid, each summed in bar order: the same bits every run
        .group_by_dynamic("grid_ms", every=f"{coarse}i", group_by="symbol")
        .agg(pl.col("open").first(), pl.col("high").max(), pl.col("low").min(), pl.col("close").last(),
             pl.col("volume").sum(), pl.col("covered_until").first())
        .with_columns(open_ms=pl.col("grid_ms") + offset)
        .filter(pl.col("open_ms") + coarse <= pl.col("covered_until"))
        .with_columns(ts=pl.from_epoch("open_ms", time_unit="ms").dt.replace_time_zone("UTC").cast(TS_DTYPE))
        .select("symbol", "ts", "open", "high", "low", "close", "volume")
        .sort("symbol", "ts")
        .collect()
    )
