"""Coarser bars from finer stored bars (e.g. 1d from 1h): open first, high max, low min, close last, volume
summed over the fine bars stored in the coarse bar's period. Periods lie on the bar grid of
``featurestore.timeframes`` (multiples of the timeframe since the epoch; weeks since a Monday).

A coarse bar is produced only when its period is **complete**: every fine bar of the period is stored (24
hourly bars for a day), so a gap or a series that starts mid-period never passes for a whole period, and a
stored coarse bar never changes when later fine bars arrive. Fine bars that arrive late complete their
period, which is then produced. ``allow_partial=True`` also produces the periods with missing fine bars
once the newest fine bar has closed at or after the period's end; ``fine_bars`` counts the fine bars each
coarse bar was built from (``expected_fine_bars`` for a complete one).

>>> import polars as pl
>>> from datetime import datetime, timezone
>>> ts = [datetime(2024, 1, 1, h, tzinfo=timezone.utc) for h in range(12, 24)]
>>> ts += [datetime(2024, 1, 2, h, tzinfo=timezone.utc) for h in range(24)] + [datetime(2024, 1, 3, tzinfo=timezone.utc)]
>>> hourly = pl.DataFrame({"symbol": "X", "ts": ts, "open": 1.0, "high": 2.0, "low": 0.5, "close": 1.5, "volume": 1.0})
>>> resample_bars(hourly, "1h", "1d").select("ts", "volume", "fine_bars").rows()  # 01-01 from 12:00; 01-03 not over
[(datetime.datetime(2024, 1, 2, 0, 0, tzinfo=zoneinfo.ZoneInfo(key='UTC')), 24.0, 24)]
>>> resample_bars(hourly, "1h", "1d", allow_partial=True)["fine_bars"].to_list()
[12, 24]
"""

from __future__ import annotations

import polars as pl

from featurestore.bars import BAR_COLUMNS, TS_DTYPE
from featurestore.errors import FeatureStoreError
from featurestore.timeframes import offset_ms, timeframe_ms

__all__ = ["expected_fine_bars", "resample_bars"]


def expected_fine_bars(from_timeframe: str, to_timeframe: str) -> int:
    """How many ``from_timeframe`` bars make one complete ``to_timeframe`` bar; refuses grids that do not nest.

    >>> expected_fine_bars("1h", "1d"), expected_fine_bars("1d", "1w")
    (24, 7)
    >>> expected_fine_bars("3d", "3w")
    Traceback (most recent call last):
    ...
    featurestore.errors.FeatureStoreError: cannot resample 3d bars to 3w: 3w periods start on Mondays, between 3d bars
    """
    fine, coarse = timeframe_ms(from_timeframe), timeframe_ms(to_timeframe)
    if coarse <= fine or coarse % fine:
        raise FeatureStoreError(f"cannot resample {from_timeframe} bars to {to_timeframe}: the target must be a "
                                f"multiple of the source timeframe")
    if (offset_ms(to_timeframe) - offset_ms(from_timeframe)) % fine:
        raise FeatureStoreError(f"cannot resample {from_timeframe} bars to {to_timeframe}: {to_timeframe} periods "
                                f"start on Mondays, between {from_timeframe} bars")
    return coarse // fine


def resample_bars(bars: pl.DataFrame | pl.LazyFrame, from_timeframe: str, to_timeframe: str, *,
                  allow_partial: bool = False) -> pl.DataFrame:
    """Aggregate bars sorted by ``(symbol, ts)`` into the ``to_timeframe`` bars of complete periods (and, with
    ``allow_partial``, of ended incomplete ones), with a ``fine_bars`` column."""
    expected = expected_fine_bars(from_timeframe, to_timeframe)
    fine, coarse = timeframe_ms(from_timeframe), timeframe_ms(to_timeframe)
    offset, epoch_ms = offset_ms(to_timeframe), pl.col("ts").dt.epoch("ms")
    kept = (pl.col("open_ms") + coarse <= pl.col("covered_until")) if allow_partial else \
        (pl.col("fine_bars") == expected)
    return (
        bars.lazy()
        .with_columns(covered_until=epoch_ms.max().over("symbol") + fine, grid_ms=epoch_ms - offset)
        # windows [k * coarse, (k + 1) * coarse) of the grid, each summed in bar order: the same bits every run
        .group_by_dynamic("grid_ms", every=f"{coarse}i", group_by="symbol")
        .agg(pl.col("open").first(), pl.col("high").max(), pl.col("low").min(), pl.col("close").last(),
             pl.col("volume").sum(), pl.col("covered_until").first(), pl.len().alias("fine_bars"))
        .with_columns(open_ms=pl.col("grid_ms") + offset)
        .filter(kept)
        .with_columns(ts=pl.from_epoch("open_ms", time_unit="ms").dt.replace_time_zone("UTC").cast(TS_DTYPE))
        .select(*BAR_COLUMNS, "fine_bars")
        .sort("symbol", "ts")
        .collect()
    )
