"""Import bars from a CSV export (TradingView style: ``time,open,high,low,close,volume``).

``time`` is either Unix epoch seconds / milliseconds, or ISO-8601 text with a UTC offset
(``2024-01-01T00:00:00Z``). Text without an offset is refused: its timezone would be a guess. An epoch
written as a float (``1704067200.0``, as pandas writes a column that held a NaN) must be a whole number;
a fractional one is refused, naming its line, rather than rounded. Header names are matched
case-insensitively; a UTF-8 byte order mark and CRLF line ends are read as the plain file.

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "btc.csv"
>>> _ = path.write_text("time,open,high,low,close,Volume\\n1704067200,1,2,0.5,1.5,10\\n")
>>> read_csv_bars(path, "BTC/USDT").select("symbol", "ts", "close").rows()
[('BTC/USDT', datetime.datetime(2024, 1, 1, 0, 0, tzinfo=zoneinfo.ZoneInfo(key='UTC')), 1.5)]
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from featurestore.bars import PRICE_COLUMNS, TS_DTYPE
from featurestore.errors import BarValidationError

__all__ = ["read_csv_bars"]

_EPOCH_MS_THRESHOLD = 100_000_000_000  # below: seconds (until year 5138); above: milliseconds


def _whole_epochs(raw: pl.DataFrame, path: Path) -> pl.DataFrame:
    """Float epochs as integers; a fractional (or infinite) one is refused, naming its line."""
    fractional = (pl.col("time") % 1 != 0) | pl.col("time").is_infinite()
    bad = raw.select(fractional.fill_null(False).arg_true().head(1)).to_series()
    if bad.len():
        row = int(bad[0])
        raise BarValidationError(
            "time is epoch seconds/ms or ISO-8601 with a UTC offset", source=f"{path} line {row + 2}",
            detail=f"time={raw['time'][row]!r} is not a whole number of seconds or milliseconds")
    return raw.with_columns(pl.col("time").cast(pl.Int64))


def _parse_time(raw: pl.DataFrame, path: Path) -> pl.Series:
    if raw.schema["time"].is_float():
        raw = _whole_epochs(raw, path)
    if raw.schema["time"].is_integer():
        epoch_ms = raw.select(pl.when(pl.col("time").abs() < _EPOCH_MS_THRESHOLD)
                              .then(pl.col("time") * 1000).otherwise(pl.col("time")))["time"]
        return pl.from_epoch(epoch_ms, time_unit="ms").dt.replace_time_zone("UTC").cast(TS_DTYPE)
    text = raw["time"].cast(pl.String)
    parsed = text.str.to_datetime(time_zone="UTC", strict=False, time_unit="ms")
    bad = (parsed.is_null() & text.is_not_null()) | ~text.str.contains(r"(Z|[+-]\d\d:?\d\d)$")
    if bad.any():
        row = int(bad.arg_true()[0])
        raise BarValidationError(
            "time is epoch seconds/ms or ISO-8601 with a UTC offset", source=f"{path} line {row + 2}",
            detail=f"time={text[row]!r}; write e.g. '2024-01-01T00:00:00Z' or an epoch number",
        )
    return parsed.cast(TS_DTYPE)


def read_csv_bars(path: str | Path, symbol: str) -> pl.DataFrame:
    """Read one symbol's bars from ``path``; errors name the file, the line and the field."""
    path = Path(path)
    try:
        raw = pl.read_csv(path, infer_schema_length=None)
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise BarValidationError("readable CSV", source=str(path), detail=str(exc).splitlines()[0]) from None
    raw = raw.rename({name: name.strip().lower() for name in raw.columns})
    if raw.is_empty():
        raise BarValidationError("at least one bar", source=str(path), detail="the file has no rows after its header")
    missing = [name for name in ("time", *PRICE_COLUMNS, "volume") if name not in raw.columns]
    if missing:
        raise BarValidationError("schema", source=str(path), detail=f"missing column(s) {missing}; got {raw.columns}")
    for name in (*PRICE_COLUMNS, "volume"):
        if not raw.schema[name].is_numeric():
            values = raw[name].cast(pl.String)
            row = int(values.cast(pl.Float64, strict=False).is_null().arg_true()[0])
            raise BarValidationError("numeric field", source=f"{path} line {row + 2}",
                                     detail=f"{name}={values[row]!r} is not a number")
    return raw.select(
        pl.lit(symbol).alias("symbol"),
        _parse_time(raw, path).alias("ts"),
        *(pl.col(name).cast(pl.Float64) for name in (*PRICE_COLUMNS, "volume")),
    )
