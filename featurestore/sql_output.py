"""Render a query result: a table on the terminal, or CSV / JSON / parquet to stdout or a file.

>>> import polars as pl
>>> write_result(pl.DataFrame({"symbol": ["BTC/USDT"], "n": [3]}), "csv", None)
symbol,n
BTC/USDT,3
"""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Literal

import polars as pl

from featurestore.atomic import write_bytes_atomic
from featurestore.errors import FeatureStoreError

__all__ = ["OutputFormat", "write_result"]

OutputFormat = Literal["table", "csv", "json", "parquet"]


def _encode(result: pl.DataFrame, fmt: OutputFormat) -> bytes:
    if fmt == "table":
        with pl.Config(tbl_rows=100, tbl_cols=50, fmt_str_lengths=80, tbl_width_chars=200):
            return (str(result) + "\n").encode()
    buffer = io.BytesIO()
    writers = {"csv": result.write_csv, "json": result.write_json, "parquet": result.write_parquet}
    try:
        writers[fmt](buffer)
    except pl.exceptions.PolarsError as exc:
        raise FeatureStoreError(f"cannot write this result as {fmt} ({exc}); try --format json or parquet, "
                                "or cast the column in SQL") from None
    return buffer.getvalue()


def write_result(result: pl.DataFrame, fmt: OutputFormat, output: Path | None) -> None:
    """Write ``result`` in ``fmt`` to ``output`` (atomically) or to stdout."""
    if fmt == "parquet" and output is None:
        raise FeatureStoreError("--format parquet needs --output FILE (parquet is binary)")
    data = _encode(result, fmt)
    if output is None:
        sys.stdout.write(data.decode())
        sys.stdout.flush()
    else:
        write_bytes_atomic(data, output)
        print(f"wrote {result.height} rows to {output}", file=sys.stderr)
