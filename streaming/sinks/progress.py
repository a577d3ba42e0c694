"""Sink: a progress bar of the bars a replay has gone through, on a terminal (tqdm's choice), else nothing.

One partition counts each symbol's bars received (the running ``Counts`` every ``FeatureRows`` carries)
against the bars the replay will read; the counts are its recovery state, so a resumed replay's bar
starts where the interrupted one stopped.

>>> from streaming.items import Counts, FeatureRows
>>> part = ProgressSink(total=10, desc="replay research").build_part("progress", "progress", None)
>>> part.write_batch([FeatureRows("BTC/USDT", [], [], Counts(received=4)), FeatureRows("BTC/USDT", [], [], Counts(received=6))])
>>> part.snapshot()
{'BTC/USDT': 6}
>>> part.close()
"""

from __future__ import annotations

from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from tqdm import tqdm

from streaming.items import FeatureRows

__all__ = ["ProgressSink"]


class ProgressSink(FixedPartitionedSink[FeatureRows, dict]):
    """A bar of ``total`` bars named ``desc``, shown only when stderr is a terminal."""

    def __init__(self, total: int, desc: str) -> None:
        self.total, self.desc = total, desc

    def list_parts(self) -> list[str]:
        return ["progress"]

    def build_part(self, step_id: str, for_part: str, resume_state: dict | None) -> _ProgressPartition:
        return _ProgressPartition(self, dict(resume_state or {}))


class _ProgressPartition(StatefulSinkPartition[FeatureRows, dict]):
    def __init__(self, sink: ProgressSink, seen: dict[str, int]) -> None:
        self._seen = seen
        self._bar = tqdm(total=sink.total, initial=sum(seen.values()), desc=sink.desc, unit="bar", disable=None)

    def write_batch(self, values: list[FeatureRows]) -> None:
        before = sum(self._seen.values())
        self._seen.update((rows.symbol, rows.counts.received) for rows in values)
        self._bar.update(sum(self._seen.values()) - before)

    def snapshot(self) -> dict:
        return dict(self._seen)

    def close(self) -> None:
        self._bar.close()
