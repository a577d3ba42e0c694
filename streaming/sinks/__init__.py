"""Bytewax sinks for feature rows; each is exactly-once or idempotent under Bytewax recovery.

``online`` (latest row per symbol, upsert), ``jsonl`` (every row, truncated back to the committed
offset on resume), ``offline_parts`` (parquet parts named by window, overwritten on replay) and
``metrics`` (the per-symbol counters as JSON), ``bar_store`` (a live flow's bars into the bar store, skipped
when stored already), ``signals`` (every row scored into a signed signal,
appended once to the audit log) and ``progress`` (a replay's progress bar on a terminal).
"""

from streaming.sinks.bar_store import BarStoreSink
from streaming.sinks.jsonl import JsonlSink, read_jsonl
from streaming.sinks.metrics import MetricsSink, read_metrics, summary_line
from streaming.sinks.offline_parts import OfflinePartsSink, parts_dir, scan_parts
from streaming.sinks.online import OnlineSink
from streaming.sinks.progress import ProgressSink
from streaming.sinks.signals import SignalSink

__all__ = ["BarStoreSink", "JsonlSink", "MetricsSink", "OfflinePartsSink", "OnlineSink", "ProgressSink", "SignalSink", "parts_dir",
           "read_jsonl", "read_metrics", "scan_parts", "summary_line"]
