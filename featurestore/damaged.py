"""Damaged stored files, found before they are read and named in a one-line error with the fix.

A parquet file whose footer cannot be read (truncated, emptied, overwritten with something else) would
fail deep inside polars or DuckDB with a message that names no file. Every read of stored files checks
the footers of the files it is about to read first (a few hundred bytes each), so a damaged file fails
exactly the commands that touch it, with ``DamagedFileError`` naming it; other series keep working.

>>> import tempfile, pathlib, polars as pl
>>> directory = pathlib.Path(tempfile.mkdtemp())
>>> pl.DataFrame({"x": [1]}).write_parquet(directory / "good.parquet")
>>> _ = (directory / "bad.parquet").write_bytes(b"PAR1 cut short")
>>> sorted(path.name for path in damaged_files(sorted(directory.iterdir())))
['bad.parquet']
>>> check_readable([directory / "bad.parquet"], fix="delete it")
Traceback (most recent call last):
...
featurestore.errors.DamagedFileError: damaged file .../bad.parquet: Parquet magic bytes not found in footer. ...; delete it
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from featurestore.errors import DamagedFileError

if TYPE_CHECKING:
    from pyarrow.parquet import FileMetaData

__all__ = ["REPAIR", "check_readable", "damaged_files", "read_footer"]

#: What to do about a damaged file of the store.
REPAIR = "move it out of the store (or restore it from a backup), then ingest its bars or backfill its features again"


def _footer(path: Path) -> FileMetaData | str:
    """``path``'s parquet footer, or why it cannot be read."""
    # imported here, not at the top: pyarrow.parquet takes 0.2 s to import, and every CLI start paid for it
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_metadata(path)
    except (pa.ArrowException, OSError) as exc:
        return " ".join(str(exc).split()).rstrip(".")


def damaged_files(files: Sequence[Path]) -> dict[Path, str]:
    """The files of ``files`` that cannot be read, each with the reason."""
    found = {path: _footer(path) for path in files}
    return {path: footer for path, footer in found.items() if isinstance(footer, str)}


def read_footer(path: Path, *, fix: str = REPAIR) -> FileMetaData:
    """``path``'s parquet footer (its schema, row groups and statistics); ``DamagedFileError`` naming the file
    when it cannot be read."""
    footer = _footer(path)
    if isinstance(footer, str):
        raise DamagedFileError(path, footer, fix)
    return footer


def check_readable(files: Sequence[Path], *, fix: str = REPAIR) -> Sequence[Path]:
    """``files`` unchanged when each can be read; else ``DamagedFileError`` naming the first that cannot."""
    for path in files:
        read_footer(path, fix=fix)
    return files
