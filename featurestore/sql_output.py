"""Render a query result: a table on the terminal, or CSV / JSON / parquet to stdout or a file.

``check_output`` runs before the query: parquet needs a file, and no file inside the store is ever
written (a result written over a stored file would replace stored bars).

>>> import polars as pl
>>> write_result(pl.DataFrame({"symbol": ["BTC/USDT"], "n": [3]}), "csv", None)
symbol,n
BTC/USDT,3
>>> check_output(Path("store/kind=bars/out.csv"), "csv", Path("store"))
Traceback (most recent call last):
...
featurestore.errors.FeatureStoreError: --output store/kind=bars/out.csv is inside the store .../store: write results outside it (the store's files are written only by ingest and backfill)
"""

from __future__ import annotations

import io
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

import polars as pl

from featurestore.atomic import check_writable, write_bytes_atomic
from featurestore.errors import FeatureStoreError
from featurestore.sql_errors import first_failing, one_line

__all__ = ["OutputFormat", "check_output", "write_result"]

OutputFormat = Literal["table", "csv", "json", "parquet"]

_EXPLAIN_COLUMNS = ["explain_key", "explain_value"]
_UNWRITABLE = (pl.exceptions.PolarsError, pl.exceptions.PanicException)
_PER_DAY = {"ms": 86_400_000, "us": 86_400_000_000, "ns": 86_400_000_000_000}
_MAX_DAYS = 95_000_000  # ~260,000 years either side of 1970: polars (chrono) formats dates up to year 262142


def _table(result: pl.DataFrame) -> bytes:
    if result.columns == _EXPLAIN_COLUMNS:  # an EXPLAIN: the plans as DuckDB draws them, not squeezed into cells
        return "".join(f"{value}\n" for value in result["explain_value"]).encode()
    with pl.Config(tbl_rows=100, tbl_cols=50, fmt_str_lengths=80, tbl_width_chars=200):
        return (str(result) + "\n").encode()


def _written(write: Callable[[pl.DataFrame, io.BytesIO], None]) -> Callable[[pl.DataFrame], bytes]:
    def encode(result: pl.DataFrame) -> bytes:
        buffer = io.BytesIO()
        write(result, buffer)
        return buffer.getvalue()

    return encode


_ENCODERS: dict[OutputFormat, Callable[[pl.DataFrame], bytes]] = {
    "table": _table,
    "csv": _written(pl.DataFrame.write_csv),
    "json": _written(pl.DataFrame.write_json),
    "parquet": _written(pl.DataFrame.write_parquet),
}


def _leaves(series: pl.Series) -> Iterator[pl.Series]:
    """The values of ``series``, nested lists and structs taken apart."""
    if isinstance(series.dtype, pl.Struct):
        for field in series.dtype.fields:
            yield from _leaves(series.struct.field(field.name))
    elif isinstance(series.dtype, pl.List | pl.Array):
        yield from _leaves(series.explode())
    else:
        yield series


def _out_of_range(series: pl.Series) -> bool:
    """Whether a date or datetime lies outside what polars can print (DuckDB's 'infinity', year 270000)."""
    if isinstance(series.dtype, pl.Datetime):
        days = series.to_physical() // _PER_DAY[series.dtype.time_unit]
    elif isinstance(series.dtype, pl.Date):
        days = series.to_physical()
    else:
        return False
    return bool((days.abs() > _MAX_DAYS).any())


def _why_unwritable(series: pl.Series, fmt: OutputFormat) -> str | None:
    """Why polars would panic writing ``series`` as ``fmt`` (it cannot be caught quietly), or None."""
    if fmt == "parquet":
        return None
    for leaf in _leaves(series):
        if fmt == "json" and leaf.dtype == pl.Binary:
            return "JSON has no binary type"
        if _out_of_range(leaf):
            return "it holds a date outside the range polars can write, e.g. 'infinity'"
    return None


def _unwritable(name: str, dtype: pl.DataType, fmt: OutputFormat, reason: str) -> FeatureStoreError:
    return FeatureStoreError(f"cannot write column {name!r} ({dtype}) as {fmt}: {reason}; cast it in SQL, "
                             f'e.g. "{name}"::VARCHAR, or choose another --format')


def _encode(result: pl.DataFrame, fmt: OutputFormat) -> bytes:
    """``result`` in ``fmt``; an error naming the first column that cannot be written so."""
    for name in result.columns:
        reason = _why_unwritable(result[name], fmt)
        if reason:
            raise _unwritable(name, result.schema[name], fmt, reason)
    try:
        return _ENCODERS[fmt](result)
    except _UNWRITABLE as error:
        found = first_failing(result.columns, lambda name: _ENCODERS[fmt](result.select(name)), _UNWRITABLE)
        if found:
            raise _unwritable(found[0], result.schema[found[0]], fmt, one_line(str(found[1]))) from None
        raise FeatureStoreError(f"cannot write this result as {fmt}: {one_line(str(error))}") from None


def _check_format(fmt: OutputFormat, output: Path | None) -> None:
    if fmt == "parquet" and output is None:
        raise FeatureStoreError("--format parquet needs --output FILE (parquet is binary)")


def check_output(output: Path | None, fmt: OutputFormat, store_root: Path) -> None:
    """Refuse, before any query runs, an output the result cannot or must not be written to."""
    _check_format(fmt, output)
    if output is not None and output.resolve().is_relative_to(store_root.resolve()):
        raise FeatureStoreError(f"--output {output} is inside the store {store_root.resolve()}: write results "
                                "outside it (the store's files are written only by ingest and backfill)")
    if output is not None:
        check_writable(output)


def write_result(result: pl.DataFrame, fmt: OutputFormat, output: Path | None) -> None:
    """Write ``result`` in ``fmt`` to ``output`` (atomically) or to stdout."""
    _check_format(fmt, output)
    data = _encode(result, fmt)
    if output is None:
        sys.stdout.write(data.decode())
        sys.stdout.flush()
    else:
        write_bytes_atomic(data, output)
        print(f"wrote {result.height} rows to {output}", file=sys.stderr)
