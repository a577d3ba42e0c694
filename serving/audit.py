"""The signal audit log: signed signals as JSON lines, appended and never rewritten.

Default place: ``<store>/signals/signals.jsonl``. Each ``append`` is one ``write`` of whole lines to a
file opened with ``O_APPEND``, so a process that dies mid-way leaves no torn line behind. Durability is
the caller's choice: with ``fsync=True`` (the CLI) every append is on disk before it returns; the HTTP
server appends with ``fsync=False`` and calls ``sync()`` once a second from a background thread,
because one fsync costs ~4 ms (p99 ~19 ms) on our disks, more than a request's whole latency budget. A
crash of the process loses nothing written; a crash of the machine can lose the last second.

>>> import tempfile
>>> from serving.signals import sign_signal
>>> path = Path(tempfile.mkdtemp()) / "signals.jsonl"
>>> with AuditLog(path) as log:
...     log.append([sign_signal({"symbol": "BTC/USDT", "model": "m", "side": "LONG"}, key=b"k")])
>>> last_signals(path, model="m", key=b"k")["BTC/USDT"]["side"]
'LONG'
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import orjson

from serving.signals import verify_signal

__all__ = ["AuditLog", "last_signals"]


class AuditLog:
    """An open audit log file (created with mode 0600 if absent)."""

    def __init__(self, path: str | os.PathLike, *, fsync: bool = True) -> None:
        self.path, self.fsync = Path(path), fsync
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._dirty = False
        self._syncing = threading.Lock()  # sync (a background thread) and close never overlap

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def append(self, signals: list[dict[str, Any]]) -> None:
        """Write one line per signal (UTF-8 JSON, sorted keys, no whitespace) in one ``write``."""
        data = b"".join(orjson.dumps(s, option=orjson.OPT_SORT_KEYS | orjson.OPT_APPEND_NEWLINE) for s in signals)
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]
        if self.fsync:
            os.fsync(self._fd)
        else:
            self._dirty = True

    def sync(self) -> None:
        """fsync what was appended since the last sync (safe from another thread than ``append``'s)."""
        with self._syncing:
            if self._dirty and self._fd >= 0:
                self._dirty = False
                os.fsync(self._fd)

    def close(self) -> None:
        self.sync()
        with self._syncing:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


def last_signals(path: Path, *, model: str, key: bytes) -> dict[str, dict[str, Any]]:
    """Per symbol, ``model``'s last signal in the log that verifies (lines that do not are ignored)."""
    found: dict[str, dict[str, Any]] = {}
    if not Path(path).is_file():
        return found
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            try:
                signal = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(signal, dict) and signal.get("model") == model and verify_signal(signal, key=key):
                found[signal["symbol"]] = signal
    return found
