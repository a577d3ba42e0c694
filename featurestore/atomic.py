"""Atomic file writes: a reader sees the old file or the new one, never a partial one.

>>> import tempfile, pathlib, polars as pl
>>> path = pathlib.Path(tempfile.mkdtemp()) / "a" / "x.parquet"
>>> write_parquet_atomic(pl.DataFrame({"x": [1]}), path)
>>> pl.read_parquet(path)["x"].to_list()
[1]
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import polars as pl

__all__ = ["atomic_path", "write_bytes_atomic", "write_parquet_atomic"]


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_parquet_atomic(frame: pl.DataFrame, path: Path, *, compression: str = "zstd") -> None:
    """Write ``frame`` as parquet with statistics (so readers can skip row groups by ``ts``)."""
    with atomic_path(path) as tmp:
        frame.write_parquet(tmp, compression=compression, statistics=True)


def write_bytes_atomic(data: bytes, path: Path) -> None:
    """Write raw bytes (JSON sidecars, exported files)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
