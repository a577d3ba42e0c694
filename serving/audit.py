"""The signal audit log: signed signals as JSON lines, hash-chained, appended and never rewritten.

Default places: ``<store>/signals/signals.jsonl`` for live signals and ``<store>/signals/replay.jsonl`` for
signals about past moments (a replayed stream, ``score --as-of``), so a replay never becomes the position
a live service continues from.

**The chain.** ``append`` gives every signal ``seq`` (its place in the log: 1, 2, ...) and ``prev`` (the
signature of the line before it; null on the first line) and signs it with both. Beside the log, a signed
head ``<log>.head`` records the last ``seq`` and signature; ``sync()`` and ``close()`` rewrite it, after
the lines it covers are on disk. ``verify_log`` reports, naming the line:

- a line that is not UTF-8, not JSON, has a key twice, is nested too deeply, is empty or is not an object;
- a signature that does not match (a field edited, another key);
- a ``seq`` that jumps (lines deleted), that goes back (lines moved, or an older signal appended again: a
  replay, named with the line it copies), a ``prev`` that is not the signature of the line before;
- a log that ends before its head (lines cut off the end), a head that does not verify, a chained log
  without a head.

Not detectable: a log and its head both put back to an earlier state (keep a copy of the head elsewhere
to rule that out), signals written after the last head cut off (at most the last second on the HTTP
server), and anything done by someone holding the key.

**Crashes.** Each ``append`` is one ``write`` of whole lines to a file opened with ``O_APPEND``. A last line
without a newline (a write torn by a crash) is reported as a warning; the next writer cuts it back, with a
warning, before appending. Durability is the caller's choice: ``fsync=True`` (the CLI) fsyncs every append;
the HTTP server appends with ``fsync=False`` and calls ``sync()`` once a second from a background thread
(one fsync costs ~4 ms, more than a request's whole latency budget). A crash of the process loses nothing
written; a crash of the machine can lose the last second.

**One writer.** ``AuditLog`` holds an exclusive lock on the file; a second writer is refused. It verifies
the whole log when it opens it and refuses one that does not verify: a tampered log is never continued.

**Logs written before the chain** (lines without ``seq``): read as legacy lines, each signature verified
alone, accepted at the start of a log with a warning that their deletion, reordering or truncation cannot
be detected; the chain continues after them (``seq`` counts them, ``prev`` is the last one's signature).
To start a clean chain instead, move the old log aside (``mv signals.jsonl signals-legacy.jsonl``).

>>> import tempfile
>>> path = Path(tempfile.mkdtemp()) / "signals.jsonl"
>>> with AuditLog(path, key=b"k") as log:
...     signed = log.append([{"symbol": "BTC/USDT", "model": "m", "side": "LONG"},
...                          {"symbol": "ETH/USDT", "model": "m", "side": "SHORT"}])
>>> [(s["seq"], s["prev"] is None) for s in signed], signed[1]["prev"] == signed[0]["signature"]
([(1, True), (2, False)], True)
>>> verify_log(path, key=b"k").problems
[]
>>> _ = path.write_text(path.read_text().splitlines()[1] + "\\n")  # the first line deleted
>>> verify_log(path, key=b"k").problems[0].endswith("line 1: seq 2 follows seq 0: 1 signal(s) missing before it "
...                                                 "(deleted, or moved later)")
True
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from featurestore.atomic import write_bytes_atomic
from featurestore.errors import AuditLogError, FeatureStoreError
from serving.signals import sign_signal, verify_signal

__all__ = ["AuditLog", "LogReport", "head_path", "verify_log"]

log = logging.getLogger(__name__)

_HEAD_KIND = "featurestore-audit-head"
_SHOWN = 5  # problems quoted when a writer refuses a log


def head_path(path: Path) -> Path:
    """The signed head beside a log: ``signals.jsonl`` -> ``signals.jsonl.head``."""
    return path.with_name(path.name + ".head")


@dataclass
class LogReport:
    """What reading a whole log found: problems (it does not verify), warnings, and the chain's end."""

    path: Path
    signals: int = 0  # signed lines read (the torn last line excluded)
    legacy: int = 0  # lines written before the chain
    seq: int = 0  # the last line's seq
    signature: str | None = None  # the last line's signature
    head_seq: int | None = None  # what the head covers (None: no head)
    torn_at: int | None = None  # byte offset of a last line without a newline
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    last: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)  # (model, symbol) -> last signal

    @property
    def ok(self) -> bool:
        return not self.problems


class _DuplicateKeyError(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        raise _DuplicateKeyError(next(k for k, _ in pairs if k in seen or seen.add(k)))
    return out


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _parse(raw: bytes) -> dict[str, Any] | str:
    """A line as a JSON object, or why it is not one."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"not UTF-8 text (byte {exc.start})"
    if not text.strip():
        return "an empty line"
    try:
        value = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except _DuplicateKeyError as exc:
        return f"key {exc.args[0]!r} appears twice (readers would disagree on its value)"
    except RecursionError:
        return "nested too deeply to be a signal"
    except ValueError as exc:
        return f"not JSON ({getattr(exc, 'msg', exc)})"
    return value if isinstance(value, dict) else f"not a JSON object ({type(value).__name__})"


def _lines(path: Path) -> Iterator[tuple[int, int, bytes]]:
    """(line number, byte offset, bytes with the newline) of every line."""
    offset = 0
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            yield number, offset, raw
            offset += len(raw)


def _read_head(path: Path, key: bytes, report: LogReport) -> str | None:
    """The head's recorded signature (``report.head_seq`` set), or None (no head, or a problem reported)."""
    place = head_path(path)
    if not place.is_file():
        return None
    head = _parse(place.read_bytes())
    if isinstance(head, str) or head.get("kind") != _HEAD_KIND or not verify_signal(head, key=key) or not (
            type(head.get("seq")) is int and (head.get("last") is None or isinstance(head.get("last"), str))):
        report.problems.append(f"{place}: the log's head does not verify (edited, or signed with another key)")
        return None
    report.head_seq = head["seq"]
    return head["last"]


def _scan(path: Path, key: bytes) -> LogReport:
    """Read and check the whole log (see the module docstring); the head too."""
    report = LogReport(Path(path))
    head_signature = _read_head(path, key, report)
    head_unreadable = bool(report.problems)
    head_found = report.head_seq == 0 and head_signature is None
    chained, back = False, []  # lines whose seq goes back: (line, seq, signature), explained after the pass
    for number, offset, raw in _lines(path):
        where = f"{path} line {number}"
        if not raw.endswith(b"\n"):
            report.torn_at = offset
            report.warnings.append(f"{where}: the last line has no newline (a write cut short by a crash): not a "
                                   f"signal; the next writer cuts it back")
            break
        signal = _parse(raw)
        if isinstance(signal, str):
            report.problems.append(f"{where}: {signal}")
            continue
        if not verify_signal(signal, key=key):
            report.problems.append(f"{where}: signature does not match (symbol {signal.get('symbol')!r})")
            continue
        seq, prev, signature = signal.get("seq"), signal.get("prev"), signal["signature"]
        report.signals += 1
        if "seq" not in signal and "prev" not in signal:
            if chained:
                report.problems.append(f"{where}: a signal without seq after chained ones: inserted")
                continue
            report.legacy += 1
            seq = report.seq + 1
        elif type(seq) is not int or not (prev is None or isinstance(prev, str)):
            report.problems.append(f"{where}: seq must be an integer and prev a signature or null")
            continue
        elif seq <= report.seq:
            back.append((number, seq, signature))
            continue
        elif seq > report.seq + 1:
            report.problems.append(f"{where}: seq {seq} follows seq {report.seq}: {seq - report.seq - 1} signal(s) "
                                   f"missing before it (deleted, or moved later)")
        elif prev != report.signature:
            report.problems.append(f"{where}: prev is not the signature of seq {report.seq}, the line before: a line "
                                   f"was replaced")
        chained = chained or "seq" in signal
        report.seq, report.signature = seq, signature
        report.last[(signal.get("model"), signal.get("symbol"))] = signal
        if seq == report.head_seq:
            head_found = signature == head_signature
            if not head_found:
                report.problems.append(f"{where}: seq {seq} is not the signal the head recorded: the log was "
                                       f"rewritten from there")
                head_found = True  # reported once
    _explain(path, back, report)
    if report.head_seq is not None and not head_found:
        unreadable = ", or among the lines above that do not verify" if report.problems else ""
        report.problems.append(f"{path}: the log ends at seq {report.seq}, its head at seq {report.head_seq}: "
                               f"{report.head_seq - report.seq} signal(s) cut off the end{unreadable}")
    elif report.head_seq is None and chained and not head_unreadable:
        report.problems.append(f"{path}: no signed head beside the log ({head_path(path).name}): signals cut off "
                               f"the end could not be detected")
    if report.legacy:
        report.warnings.append(f"{path}: {report.legacy} signal(s) written before hash chaining (lines 1-"
                               f"{report.legacy}): each signature verifies, but their deletion, reordering or "
                               f"truncation cannot be detected")
    return report


def _explain(path: Path, back: list[tuple[int, int, str]], report: LogReport) -> None:
    """A problem for each line whose seq goes back: a copy of an earlier line (a replay), or a moved line."""
    if not back:
        return
    copied = {signature: None for _, _, signature in back}
    for number, _, raw in _lines(path):
        signal = _parse(raw) if raw.endswith(b"\n") else None
        if isinstance(signal, dict) and copied.get(signal.get("signature"), 0) is None:
            copied[signal["signature"]] = number
    for number, seq, signature in back:
        first = copied[signature]
        report.problems.append(
            f"{path} line {number}: seq {seq} again: a copy of line {first} (an older signal appended again)"
            if first is not None and first < number else
            f"{path} line {number}: seq {seq} comes after a later seq: lines out of order")


def verify_log(path: str | os.PathLike, *, key: bytes) -> LogReport:
    """Read a log as ``featurestore verify-signal`` does: every line and the chain, against its head."""
    path = Path(path)
    if not path.is_file():
        raise FeatureStoreError(f"no signal log at {path}")
    return _scan(path, key)


class AuditLog:
    """An open audit log (created with mode 0600 if absent), its writer lock held; ``key`` signs what is
    appended. Refuses a log that does not verify, and a log another writer holds."""

    def __init__(self, path: str | os.PathLike, *, key: bytes, fsync: bool = True) -> None:
        if not key:
            raise FeatureStoreError("an empty signing key signs nothing; set FEATURESTORE_SIGNING_KEY")
        self.path, self.fsync, self._key = Path(path), fsync, key
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            report = self._open()
        except BaseException:
            os.close(self._fd)
            raise
        self._seq, self._signature, self._last = report.seq, report.signature, report.last
        self._dirty = False
        self._syncing = threading.Lock()  # sync (a background thread) and close never overlap
        self._state = threading.Lock()  # the chain's end, read by sync while append moves it
        if report.head_seq is None or report.head_seq < report.seq:
            self._write_head(report.seq, report.signature)

    def _open(self) -> LogReport:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise AuditLogError(f"{self.path} is being written by another process (a running serve, or stream "
                                f"--model): one writer per log; give this one its own --audit FILE") from None
        report = _scan(self.path, self._key)
        if report.problems:
            shown = report.problems[:_SHOWN]
            more = f" (and {len(report.problems) - _SHOWN} more)" if len(report.problems) > _SHOWN else ""
            raise AuditLogError(f"refusing to append to {self.path}: it does not verify: {'; '.join(shown)}{more}. "
                                f"Check it with featurestore verify-signal {self.path}; move it aside to start a "
                                f"new log")
        for warning in report.warnings:
            log.warning("%s", warning)
        if report.torn_at is not None:
            os.ftruncate(self._fd, report.torn_at)
            log.warning("%s: cut back to %d bytes, the end of its last whole line", self.path, report.torn_at)
        return report

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def last(self, model: str) -> dict[str, dict[str, Any]]:
        """Per symbol, ``model``'s last signal in the log when it was opened."""
        return {symbol: signal for (name, symbol), signal in self._last.items() if name == model}

    def append(self, signals: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Chain (``seq``, ``prev``), sign and write ``signals`` (one line each, UTF-8 JSON, sorted keys, no
        whitespace) in one ``write``; return them signed."""
        with self._state:
            seq, previous, signed = self._seq, self._signature, []
            for signal in signals:
                seq += 1
                signed.append(sign_signal({**signal, "seq": seq, "prev": previous}, key=self._key))
                previous = signed[-1]["signature"]
            data = b"".join(orjson.dumps(s, option=orjson.OPT_SORT_KEYS | orjson.OPT_APPEND_NEWLINE) for s in signed)
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
            self._seq, self._signature = seq, previous
        if self.fsync:
            os.fsync(self._fd)
        self._dirty = True
        return signed

    def _write_head(self, seq: int, signature: str | None) -> None:
        head = sign_signal({"kind": _HEAD_KIND, "seq": seq, "last": signature}, key=self._key)
        write_bytes_atomic(orjson.dumps(head, option=orjson.OPT_SORT_KEYS | orjson.OPT_APPEND_NEWLINE),
                           head_path(self.path))

    def sync(self) -> None:
        """fsync what was appended since the last sync, then rewrite the head to cover it (safe from another
        thread than ``append``'s)."""
        with self._syncing:
            if self._dirty and self._fd >= 0:
                self._dirty = False
                with self._state:
                    seq, signature = self._seq, self._signature
                os.fsync(self._fd)
                self._write_head(seq, signature)

    def close(self) -> None:
        self.sync()
        with self._syncing:
            if self._fd >= 0:
                os.close(self._fd)  # releases the lock
                self._fd = -1
