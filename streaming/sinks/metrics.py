"""Sink: each symbol's counters (bars received, applied, duplicates, late, conflicts) as a JSON file.

Every ``FeatureRows`` carries its symbol's running ``Counts`` (part of the keyed state, so recovery
restores them); one partition keeps the newest per symbol, snapshots them for recovery with the view
version that counted them, and rewrites the file atomically at most every ``every_ms`` of clock time and
when the flow ends. Bytewax builds the partition when the flow starts, so recovery state of another view
version is refused there, before any bar is read (the keyed states it would resume hold another
version's engine state).

>>> import tempfile
>>> from featurestore.builtin_views import RESEARCH
>>> from streaming.items import Counts, FeatureRows
>>> path = Path(tempfile.mkdtemp()) / "metrics.json"
>>> part = MetricsSink(path, RESEARCH, clock=lambda: 0).build_part("metrics", "metrics", None)
>>> part.write_batch([FeatureRows("BTC/USDT", [], [], Counts(received=5, applied=4, duplicates=1))])
>>> part.close()
>>> print(summary_line(read_metrics(path)))
research v...: 1 symbol(s), 5 bars received, 4 applied, 1 dropped (1 duplicate, 0 late, 0 conflicting)
"""

from __future__ import annotations

import json
from pathlib import Path

from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

from featurestore.atomic import write_bytes_atomic
from featurestore.definitions import FeatureView
from featurestore.errors import VersionSkewError
from streaming.clock import Clock, to_datetime
from streaming.items import Counts, FeatureRows

__all__ = ["MetricsSink", "read_metrics", "refuse_other_version", "summary_line"]


Snapshot = tuple[str, dict[str, Counts]]  # (view version, counts per symbol)


class MetricsSink(FixedPartitionedSink[FeatureRows, Snapshot]):
    """Keep the newest ``Counts`` per symbol in the JSON file ``path``."""

    def __init__(self, path: Path, view: FeatureView, *, clock: Clock, every_ms: int = 1000) -> None:
        self.path, self.view, self.clock, self.every_ms = Path(path), view, clock, every_ms

    def list_parts(self) -> list[str]:
        return ["metrics"]

    def build_part(self, step_id: str, for_part: str, resume_state: Snapshot | None) -> _MetricsPartition:
        version, counts = resume_state or (self.view.version, {})
        refuse_other_version(self.view, version)
        return _MetricsPartition(self, dict(counts))


def refuse_other_version(view: FeatureView, version: str) -> None:
    """Raise when recovery state built by another ``version`` of ``view`` would be resumed by this run."""
    if version != view.version:
        raise VersionSkewError(
            f"the recovery state was built by view {view.name!r} version {version}, this run computes version "
            f"{view.version}: delete the recovery directory (or give another) to start over, or stream "
            f"--view {view.name}@{version}")


class _MetricsPartition(StatefulSinkPartition[FeatureRows, Snapshot]):
    def __init__(self, sink: MetricsSink, counts: dict[str, Counts]) -> None:
        self._sink, self._counts = sink, counts
        self._written_at: int | None = None

    def write_batch(self, values: list[FeatureRows]) -> None:
        for rows in values:
            self._counts[rows.symbol] = rows.counts
        now = self._sink.clock()
        if self._written_at is None or now - self._written_at >= self._sink.every_ms:
            self._write(now)

    def _write(self, now: int) -> None:
        sink = self._sink
        symbols = {symbol: counts._asdict() for symbol, counts in sorted(self._counts.items())}
        total = {name: sum(c[name] for c in symbols.values()) for name in Counts._fields}
        document = {"view": sink.view.name, "view_version": sink.view.version,
                    "updated_at": to_datetime(now).isoformat(), "total": total, "symbols": symbols}
        write_bytes_atomic(json.dumps(document, indent=1).encode(), sink.path)
        self._written_at = now

    def snapshot(self) -> Snapshot:
        return self._sink.view.version, dict(self._counts)

    def close(self) -> None:
        self._write(self._sink.clock())


def read_metrics(path: Path) -> dict:
    """The metrics document a ``MetricsSink`` wrote."""
    return json.loads(Path(path).read_text())


def summary_line(metrics: dict) -> str:
    """One line for humans: totals over every symbol."""
    t = metrics["total"]
    dropped = t["duplicates"] + t["late"] + t["conflicts"]
    return (f"{metrics['view']} v{metrics['view_version']}: {len(metrics['symbols'])} symbol(s), "
            f"{t['received']:,} bars received, {t['applied']:,} applied, {dropped:,} dropped "
            f"({t['duplicates']:,} duplicate, {t['late']:,} late, {t['conflicts']:,} conflicting)")
