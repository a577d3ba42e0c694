"""The bar contract: schema, normalisation and the validation rules every batch passes on the way in.

A bar is ``(symbol, ts, open, high, low, close, volume)`` where ``ts`` is the bar's open time in UTC
(see ``docs/semantics.md``). A batch that breaks any rule is rejected whole, with an error that
names the symbol, the offending row's ``ts`` and the rule.

>>> import polars as pl
>>> from datetime import datetime, timezone
>>> bars = pl.DataFrame({"symbol": ["BTC/USDT"], "ts": [datetime(2024, 1, 1, tzinfo=timezone.utc)],
...     "open": [1.0], "high": [2.0], "low": [0.5], "close": [1.5], "volume": [10.0]})
>>> validate_bars(bars, "1h").height
1
>>> validate_bars(bars.with_columns(low=pl.lit(1.2)), "1h")
Traceback (most recent call last):
...
featurestore.errors.BarValidationError: bar rejected (symbol BTC/USDT, ts 2024-01-01 00:00:00+00:00): rule 'low <= min(open, close)' broken: low=1.2, open=1.0, close=1.5
"""

from __future__ import annotations

import polars as pl

from featurestore.errors import BarValidationError
from featurestore.timeframes import offset_ms, timeframe_ms

__all__ = ["BAR_COLUMNS", "PRICE_COLUMNS", "TS_DTYPE", "find_gaps", "normalize_bars", "validate_bars"]

TS_DTYPE = pl.Datetime("ms", "UTC")
PRICE_COLUMNS = ("open", "high", "low", "close")
BAR_COLUMNS = ("symbol", "ts", *PRICE_COLUMNS, "volume")


def normalize_bars(bars: pl.DataFrame, *, source: str | None = None, first_line: int | None = None) -> pl.DataFrame:
    """Select the bar columns in canonical order and dtypes; refuse a missing, null or mistyped column."""
    missing = [name for name in BAR_COLUMNS if name not in bars.columns]
    if missing:
        raise BarValidationError("schema", source=source,
                                 detail=f"missing column(s) {missing}; got {bars.columns}")
    ts = bars.schema["ts"]
    if not isinstance(ts, pl.Datetime) or ts.time_zone not in ("UTC", "Etc/UTC", "+00:00"):
        raise BarValidationError("ts is a UTC datetime", source=source,
                                 detail=f"column 'ts' has dtype {ts}; expected a timezone-aware UTC datetime")
    if bars.schema["symbol"] != pl.String:
        raise BarValidationError("schema", source=source, detail=f"column 'symbol' has dtype {bars.schema['symbol']}")
    for name in (*PRICE_COLUMNS, "volume"):
        if not bars.schema[name].is_numeric():
            raise BarValidationError("schema", source=source,
                                     detail=f"column {name!r} has dtype {bars.schema[name]}; expected a number")
    for name in BAR_COLUMNS:
        _first_offence(bars, pl.col(name).is_null(), f"{name} is not null", source, f"{name} is null", first_line)
    _first_offence(bars, pl.col("ts").dt.epoch("ns") % 1_000_000 != 0, "ts has whole milliseconds", source,
                   "ts has a sub-millisecond part, which the store (millisecond timestamps) would drop", first_line)
    out = bars.select(
        pl.col("symbol"),
        pl.col("ts").dt.convert_time_zone("UTC").cast(TS_DTYPE),
        *(pl.col(name).cast(pl.Float64) for name in (*PRICE_COLUMNS, "volume")),
    )
    return out


def _rules(timeframe: str) -> list[tuple[str, pl.Expr, pl.Expr]]:
    """(rule, offending-row predicate, detail expression) in the order they are checked."""
    epoch_ms = pl.col("ts").dt.epoch("ms")
    step_ms, offset = timeframe_ms(timeframe), offset_ms(timeframe)
    prev_ts = pl.col("ts").shift(1).over("symbol")
    price_detail = pl.format("open={}, high={}, low={}, close={}", *PRICE_COLUMNS)
    return [
        ("ts aligned to the timeframe", (epoch_ms - offset) % step_ms != 0,
         pl.format("ts is not a multiple of {} ms", pl.lit(step_ms))),
        ("ts strictly increasing per symbol", pl.col("ts") <= prev_ts,
         pl.format("previous ts {} >= this ts (duplicate or unsorted)", prev_ts.cast(pl.String))),
        ("prices are positive and finite",
         pl.any_horizontal(~pl.col(c).is_finite() | (pl.col(c) <= 0) for c in PRICE_COLUMNS), price_detail),
        ("low <= min(open, close)", pl.col("low") > pl.min_horizontal("open", "close"),
         pl.format("low={}, open={}, close={}", "low", "open", "close")),
        ("max(open, close) <= high", pl.col("high") < pl.max_horizontal("open", "close"),
         pl.format("high={}, open={}, close={}", "high", "open", "close")),
        ("volume is finite and >= 0", ~pl.col("volume").is_finite() | (pl.col("volume") < 0),
         pl.format("volume={}", "volume")),
    ]


def _first_offence(bars: pl.DataFrame, offends: pl.Expr, rule: str, source: str | None,
                   detail: pl.Expr | str, first_line: int | None) -> None:
    detail_expr = pl.lit(detail) if isinstance(detail, str) else detail
    bad = bars.lazy().with_row_index("_row").filter(offends).head(1).select(
        "_row", "symbol", "ts", detail_expr.alias("_detail")).collect()
    if bad.height:
        row = bad.row(0, named=True)
        where = f"line {row['_row'] + first_line}" if first_line is not None else f"row {row['_row']} of the batch"
        raise BarValidationError(rule, symbol=row["symbol"], ts=row["ts"], source=source,
                                 detail=f"{row['_detail']} ({where})" if source else row["_detail"])


def validate_bars(bars: pl.DataFrame, timeframe: str, *, source: str | None = None,
                  first_line: int | None = None) -> pl.DataFrame:
    """Normalise and check a batch against every rule; return it unchanged in content or raise.

    Rows must already be sorted by ``ts`` within each symbol: a batch is not silently reordered.
    With ``first_line`` (the file line of row 0), errors name the file line instead of the row.
    """
    out = normalize_bars(bars, source=source, first_line=first_line)
    for rule, offends, detail in _rules(timeframe):
        _first_offence(out, offends, rule, source, detail, first_line)
    return out


def find_gaps(bars: pl.DataFrame | pl.LazyFrame, timeframe: str) -> pl.DataFrame:
    """Missing bars per symbol: one row per gap with the first missing open time and how many are missing.

    >>> import polars as pl
    >>> from datetime import datetime, timezone
    >>> ts = [datetime(2024, 1, 1, h, tzinfo=timezone.utc) for h in (0, 1, 4)]
    >>> find_gaps(pl.DataFrame({"symbol": ["X"] * 3, "ts": ts}), "1h").to_dicts()
    [{'symbol': 'X', 'first_missing': datetime.datetime(2024, 1, 1, 2, 0, tzinfo=zoneinfo.ZoneInfo(key='UTC')), 'missing_bars': 2}]
    """
    step = timeframe_ms(timeframe)
    return (
        bars.lazy()
        .select("symbol", "ts")
        .sort("symbol", "ts")
        .with_columns(prev=pl.col("ts").shift(1).over("symbol"))
        .filter((pl.col("ts") - pl.col("prev")).dt.total_milliseconds() > step)
        .select(
            "symbol",
            first_missing=pl.col("prev") + pl.duration(milliseconds=step),
            missing_bars=((pl.col("ts") - pl.col("prev")).dt.total_milliseconds() // step - 1),
        )
        .collect()
    )
