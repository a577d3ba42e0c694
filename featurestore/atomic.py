"""Atomic file writes: a reader sees the old file or the new one, never a partial one.

Every file is written to a temporary name beside its target, ``.<name>.<host>.<pid>.<random>.tmp``, fsynced
and renamed into place. Temporary files are created with the process's umask (``0o666 & ~umask``, as
``open()`` would), so a store on a shared file system stays readable by the group it is shared with.
A temporary file whose writer is gone (its process on this host no longer runs) is an orphan: every
write removes the orphans of the directory it writes into (``remove_orphans``). Temporary names end in
``.tmp``, so no ``*.parquet`` glob ever sees one.

>>> import tempfile, pathlib, polars as pl
>>> path = pathlib.Path(tempfile.mkdtemp()) / "a" / "x.parquet"
>>> write_parquet_atomic(pl.DataFrame({"x": [1]}), path)
>>> pl.read_parquet(path)["x"].to_list()
[1]
>>> pending = PendingFile(path.parent / "y.parquet")   # written now, renamed into place later
>>> pending.tmp.name.startswith(".y.parquet.") and pending.tmp.name.endswith(".tmp")
True
>>> pending.discard(); sorted(p.name for p in path.parent.iterdir())
['x.parquet']
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import polars as pl

from featurestore.errors import FeatureStoreError

__all__ = ["PendingFile", "atomic_path", "check_writable", "remove_orphans", "write_bytes_atomic",
           "write_parquet_atomic"]

_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"
_TMP = re.compile(r"^\.(?P<name>.+)\.(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp$")
_LEGACY_TMP = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")  # tempfile.mkstemp's names, before writers were named
_LEGACY_AGE_S = 86_400.0  # a legacy temporary file this old has no writer left


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _orphan(entry: os.DirEntry, now: float) -> bool:
    match = _TMP.match(entry.name)
    if match is not None:
        return match["host"] == _HOST and not _alive(int(match["pid"]))
    return bool(_LEGACY_TMP.match(entry.name)) and now - entry.stat().st_mtime > _LEGACY_AGE_S


def check_writable(path: Path) -> Path:
    """``path`` if a file can be written there: it is no directory, and none of its parents is a file.

    >>> check_writable(Path("/"))
    Traceback (most recent call last):
    ...
    featurestore.errors.FeatureStoreError: / is a directory; name a file in it
    """
    if path.is_dir():
        raise FeatureStoreError(f"{path} is a directory; name a file in it")
    blocking = next((parent for parent in path.parents if parent.exists() and not parent.is_dir()), None)
    if blocking is not None:
        raise FeatureStoreError(f"cannot write {path}: {blocking} is a file, not a directory")
    return path


def remove_orphans(directory: Path) -> list[Path]:
    """Delete the temporary files in ``directory`` left by writers that were killed; return them.

    Only files written on this host are judged (another host's writer may still be running), and the
    temporary files of ``tempfile.mkstemp`` that earlier versions wrote once they are a day old.
    """
    removed = []
    now = time.time()
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return removed
    for entry in entries:
        if entry.name.endswith(".tmp") and entry.is_file(follow_symlinks=False) and _orphan(entry, now):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


class PendingFile:
    """A temporary file beside ``target`` (its directory created, its orphans removed): write to ``tmp``,
    then ``commit()`` (fsync and rename over ``target``) or ``discard()``."""

    def __init__(self, target: Path) -> None:
        self.target = target
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_orphans(target.parent)
        while True:
            tmp = target.parent / f".{target.name}.{_HOST}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
            try:
                os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # the umask applies
            except FileExistsError:
                continue
            self.tmp = tmp
            return

    def commit(self) -> None:
        with open(self.tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(self.tmp, self.target)

    def discard(self) -> None:
        self.tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it over ``path``."""
    pending = PendingFile(path)
    try:
        yield pending.tmp
        pending.commit()
    finally:
        pending.discard()


def write_parquet_atomic(frame: pl.DataFrame, path: Path, *, compression: str = "zstd") -> None:
    """Write ``frame`` as parquet with statistics (so readers can skip row groups by ``ts``)."""
    with atomic_path(path) as tmp:
        frame.write_parquet(tmp, compression=compression, statistics=True)


def write_bytes_atomic(data: bytes, path: Path) -> None:
    """Write raw bytes (JSON sidecars, exported files)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
