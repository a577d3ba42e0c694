"""Sink: every emitted feature row as one JSON line, exactly once under Bytewax recovery.

One partition writes the whole file. Its recovery state is the byte offset written when the last
snapshot was taken; on resume the file is cut back to that offset before anything is written, and
Bytewax replays exactly the rows emitted after that snapshot, so the file ends up holding every row
once. A fresh run (no resume state) starts the file empty.

Each line: ``{"symbol", "ts" (ISO-8601 UTC row time), "view", "view_version", <feature>: value...}``;
null is ``null``, and non-finite values use Python's ``NaN`` / ``Infinity`` tokens (``json.loads``
reads them back; values round-trip bit for bit).

>>> import tempfile
>>> from featurestore.builtin_views import RESEARCH
>>> from streaming.items import Counts
>>> path = Path(tempfile.mkdtemp()) / "rows.jsonl"
>>> names = RESEARCH.feature_names
>>> part = JsonlSink(path, RESEARCH, names).build_part("jsonl", "jsonl", None)
>>> part.write_batch([FeatureRows("BTC/USDT", [1714521660000], [(0.5,) + (None,) * 13], Counts(1, 1))])
>>> part.snapshot() == path.stat().st_size
True
>>> read_jsonl(path, names).select("symbol", "ts", "ret_1", "ret_3").rows()
[('BTC/USDT', datetime.datetime(2024, 5, 1, 0, 1, tzinfo=zoneinfo.ZoneInfo(key='UTC')), 0.5, None)]
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import polars as pl
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

from featurestore.bars import TS_DTYPE
from featurestore.definitions import FeatureView
from featurestore.errors import FeatureStoreError
from streaming.clock import to_datetime
from streaming.items import FeatureRows

__all__ = ["JsonlSink", "read_jsonl"]


class JsonlSink(FixedPartitionedSink[FeatureRows, int]):
    """Append every row to the JSON-lines file ``path``."""

    def __init__(self, path: Path, view: FeatureView, feature_names: list[str]) -> None:
        self.path, self.view, self.feature_names = Path(path), view, feature_names

    def list_parts(self) -> list[str]:
        return ["jsonl"]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _JsonlPartition:
        return _JsonlPartition(self, resume_state or 0)


class _JsonlPartition(StatefulSinkPartition[FeatureRows, int]):
    def __init__(self, sink: JsonlSink, offset: int) -> None:
        self._sink, self._offset = sink, offset
        sink.path.parent.mkdir(parents=True, exist_ok=True)
        size = sink.path.stat().st_size if sink.path.exists() else 0
        if size < offset:
            raise FeatureStoreError(f"{sink.path} holds {size} bytes but {offset} were written before the restart; "
                                    "the file was changed outside the flow: delete the recovery directory to start over")
        self._file = open(sink.path, "ab")  # noqa: SIM115 (open until close())
        os.truncate(self._file.fileno(), offset)
        self._file.seek(offset)

    def write_batch(self, values: list[FeatureRows]) -> None:
        sink = self._sink
        head = {"view": sink.view.name, "view_version": sink.view.version}
        data = "".join(
            json.dumps({"symbol": rows.symbol, "ts": to_datetime(ts).isoformat(), **head,
                        **dict(zip(sink.feature_names, row, strict=True))}) + "\n"
            for rows in values for ts, row in zip(rows.ts, rows.values, strict=True)).encode()
        if data:
            self._file.write(data)
            self._file.flush()
            self._offset += len(data)

    def snapshot(self) -> int:
        return self._offset

    def close(self) -> None:
        self._file.close()


def read_jsonl(path: Path, feature_names: list[str]) -> pl.DataFrame:
    """The rows of a JSONL sink file as ``symbol``, ``ts``, features (the shape ``compute`` returns)."""
    with open(path) as handle:
        records = [json.loads(line) for line in handle]
    return pl.DataFrame(
        {"symbol": [r["symbol"] for r in records], "ts": [r["ts"] for r in records],
         **{name: [r[name] for r in records] for name in feature_names}},
        schema={"symbol": pl.String, "ts": pl.String, **dict.fromkeys(feature_names, pl.Float64)},
    ).with_columns(pl.col("ts").str.to_datetime(time_unit="ms", time_zone="UTC").cast(TS_DTYPE))
