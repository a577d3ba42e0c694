"""Import bars from a CSV export: one row per bar, a header line, the format described in ``docs/csv.md``.

Columns are found by name, case-insensitively, ignoring spaces, dots and dashes (``Open Time`` is
``open_time``), among the usual spellings (``_COLUMNS``); other columns are ignored, and two columns
that read as the same field are refused. The time column holds either

- Unix epoch numbers, all in one unit told by magnitude: below 1e11 seconds, below 1e14 milliseconds,
  below 1e17 microseconds, else nanoseconds (so each unit reads the dates from 1973 to 5138; nanoseconds
  end in 2262, with 64-bit counts); a float that is a whole number (``1704067200.0``, as pandas writes a
  column that held a NaN) is that number, a fractional one is refused rather than rounded; or
- dates and times as text (ISO-8601 or ``2024-01-01 00:00:00``): with a UTC offset (``Z``, ``+02:00``),
  or without one when ``timezone`` says what zone they are in (a time that zone skips or repeats at a
  daylight-saving change is refused). Naive text without ``timezone`` is refused: its zone would be a guess.

A UTF-8 byte order mark and CRLF line ends are read as the plain file. Every error names the file,
the line and the field.

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "btc.csv"
>>> _ = path.write_text("Date,Open,High,Low,Close,Vol\\n2024-01-01 09:00,1,2,0.5,1.5,10\\n")
>>> read_csv_bars(path, "BTC/USDT", timezone="Asia/Tokyo").select("symbol", "ts", "close").rows()
[('BTC/USDT', datetime.datetime(2024, 1, 1, 0, 0, tzinfo=zoneinfo.ZoneInfo(key='UTC')), 1.5)]
"""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl

from featurestore.bars import PRICE_COLUMNS, TS_DTYPE
from featurestore.errors import BarValidationError, FeatureStoreError

__all__ = ["read_csv_bars"]

# Each field and the header names read as it (after lowercasing; spaces, dots and dashes become "_").
_COLUMNS = {
    "time": ("time", "timestamp", "date", "datetime", "date_time", "open_time", "ts", "unix"),
    "open": ("open", "o"),
    "high": ("high", "h"),
    "low": ("low", "l"),
    "close": ("close", "c"),
    "volume": ("volume", "vol", "v"),
}
_FIELDS = tuple(_COLUMNS)
# Epoch units by magnitude: (upper bound of |value|, name, value * numerator // denominator = milliseconds).
_EPOCH_UNITS = ((10**11, "seconds", 1000, 1), (10**14, "milliseconds", 1, 1), (10**17, "microseconds", 1, 1000),
                (2**63, "nanoseconds", 1, 10**6))
_TIME_RULE = "time is an epoch number, or a date with a UTC offset (naive ones with --timezone)"
_OFFSET = r"(?i)(z|[+-]\d\d:?\d\d)$"


def _header_key(name: str) -> str:
    return re.sub(r"[\s.\-]+", "_", name.strip().lower()).strip("_")


def _field_columns(columns: list[str], path: Path) -> dict[str, str]:
    """{field: the file's column} for each field; a missing field, or two columns for one, is an error."""
    found: dict[str, str] = {}
    for column in columns:
        field = next((f for f, names in _COLUMNS.items() if _header_key(column) in names), None)
        if field is None:
            continue
        if field in found:
            raise BarValidationError("one column per field", source=str(path), detail=(
                f"columns {found[field]!r} and {column!r} both read as {field}; keep one, or rename the other"))
        found[field] = column
    missing = [field for field in _FIELDS if field not in found]
    if missing:
        accepted = "; ".join(f"{field}: {', '.join(_COLUMNS[field])}" for field in missing)
        raise BarValidationError("schema", source=str(path),
                                 detail=f"missing column(s) {missing} (names read as them: {accepted}); got {columns}")
    return found


def _refuse(path: Path, row: int, rule: str, detail: str) -> BarValidationError:
    return BarValidationError(rule, source=f"{path} line {row + 2}", detail=detail)


def _numbers(text: pl.Series, field: str, path: Path) -> pl.Series:
    values = text.str.strip_chars().cast(pl.Float64, strict=False)
    bad = values.is_null() | ~values.is_finite()
    if bad.any():
        row = int(bad.arg_true()[0])
        if text[row] is None or not text[row].strip():
            shown = " is empty"
        else:
            shown = f"={text[row]!r} is not a {'finite ' if values[row] is not None else ''}number"
        raise _refuse(path, row, "numeric field", f"{field}{shown}")
    return values


def _epoch_ms(text: pl.Series, path: Path) -> pl.Series:
    """Whole epoch numbers (text) -> milliseconds, the unit told by the magnitude of the first."""
    whole = text.str.replace(r"\.0*$", "")
    fractional = whole.str.contains(r"\.")
    values = whole.cast(pl.Int64, strict=False)
    bad = fractional | values.is_null()
    if bad.any():
        row = int(bad.arg_true()[0])
        raise _refuse(path, row, _TIME_RULE, f"time={text[row]} is not a whole number of seconds, milliseconds, "
                      "microseconds or nanoseconds")
    magnitude = values.abs()
    unit = pl.select(pl.coalesce(*(pl.when(pl.lit(magnitude) < bound).then(i) for i, (bound, *_) in
                                   enumerate(_EPOCH_UNITS)))).to_series()
    if unit.n_unique() > 1:
        row = int((unit != unit[0]).arg_true()[0])
        raise _refuse(path, row, _TIME_RULE, f"time={text[row]} reads as {_EPOCH_UNITS[unit[row]][1]} but line 2's "
                      f"{text[0]} as {_EPOCH_UNITS[unit[0]][1]}; write every time in one unit")
    _, name, numerator, denominator = _EPOCH_UNITS[unit[0]]
    partial = values * numerator % denominator != 0
    if partial.any():
        row = int(partial.arg_true()[0])
        raise _refuse(path, row, _TIME_RULE, f"time={text[row]} ({name}) is not a whole millisecond")
    return values * numerator // denominator


def _text_times(text: pl.Series, path: Path, timezone: str | None) -> pl.Series:
    """Dates as text -> UTC datetimes: with an offset as written, naive ones in ``timezone``."""
    offset = text.str.contains(_OFFSET)
    if not offset.all() and timezone is None:
        row = int((~offset).arg_true()[0])
        raise _refuse(path, row, _TIME_RULE, f"time={text[row]!r} has no UTC offset, so its time zone would be a "
                      f"guess; pass --timezone ZONE (e.g. --timezone UTC or --timezone America/New_York), or write "
                      f"e.g. '2024-01-01T00:00:00Z'")
    if offset.any() and not offset.all():
        row = int((offset != offset[0]).arg_true()[0])
        raise _refuse(path, row, _TIME_RULE, f"time={text[row]!r} and line 2's {text[0]!r} differ in having a UTC "
                      "offset; write every time the same way")
    aware = bool(offset[0])
    parsed = text.str.to_datetime(time_zone="UTC" if aware else None, strict=False, time_unit="ms")
    if parsed.is_null().any():
        row = int(parsed.is_null().arg_true()[0])
        raise _refuse(path, row, _TIME_RULE, f"time={text[row]!r} is not a date and time written like line 2's "
                      f"{text[0]!r}; write ISO-8601, e.g. '2024-01-01T00:00:00Z', or an epoch number")
    if aware:
        return parsed
    local = parsed.dt.replace_time_zone(timezone, ambiguous="null", non_existent="null")
    if local.is_null().any():
        row = int(local.is_null().arg_true()[0])
        raise _refuse(path, row, _TIME_RULE, f"time={text[row]!r} does not exist or is ambiguous in {timezone} "
                      "(a daylight-saving change); write times with a UTC offset, or in a zone without one")
    return local.dt.convert_time_zone("UTC")


def _parse_time(text: pl.Series, path: Path, timezone: str | None) -> pl.Series:
    text = text.str.strip_chars()
    if text.is_null().any():
        raise _refuse(path, int(text.is_null().arg_true()[0]), _TIME_RULE, "time is empty")
    epoch = text.str.contains(r"^[+-]?\d+(\.\d*)?$")
    if epoch.all():
        return pl.from_epoch(_epoch_ms(text, path), time_unit="ms").dt.replace_time_zone("UTC").cast(TS_DTYPE)
    if epoch.any():
        row = int((epoch != epoch[0]).arg_true()[0])
        raise _refuse(path, row, _TIME_RULE, f"time={text[row]!r} and line 2's {text[0]!r} mix epoch numbers and "
                      "dates; write every time the same way")
    return _text_times(text, path, timezone).cast(TS_DTYPE)


def _check_utf8(path: Path, sample: int = 1 << 16) -> None:
    """Refuse a file whose first ``sample`` bytes are not UTF-8 text (a binary file, another encoding)."""
    with path.open("rb") as file:
        head = file.read(sample)
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.reason != "unexpected end of data" or len(head) < sample:  # else: a character cut by the sample
            raise BarValidationError("readable CSV", source=str(path), detail=(
                f"not UTF-8 text (byte {exc.start}); save it as UTF-8 (any spreadsheet's 'CSV UTF-8')")) from None


def read_csv_bars(path: str | Path, symbol: str, *, timezone: str | None = None) -> pl.DataFrame:
    """Read one symbol's bars from ``path`` (naive text times in ``timezone``); errors name file, line and field."""
    path = Path(path)
    if not path.is_file():
        raise FeatureStoreError(f"CSV file {path} " + ("is a directory" if path.is_dir() else "does not exist"))
    _check_utf8(path)
    try:
        raw = pl.read_csv(path, infer_schema=False)
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise BarValidationError("readable CSV", source=str(path), detail=str(exc).splitlines()[0]) from None
    columns = _field_columns(raw.columns, path)
    if raw.is_empty():
        raise BarValidationError("at least one bar", source=str(path), detail="the file has no rows after its header")
    return pl.DataFrame([
        pl.repeat(symbol, raw.height, dtype=pl.String, eager=True).alias("symbol"),
        _parse_time(raw[columns["time"]], path, timezone).alias("ts"),
        *(_numbers(raw[columns[field]], field, path).alias(field) for field in (*PRICE_COLUMNS, "volume")),
    ])
