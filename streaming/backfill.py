"""The backfill as a Bytewax dataflow: its symbols shared out over the workers of one process or of a cluster.

Every process lists the same (view, symbol) pairs and shares them out the same way (``streaming.placement.share``):
largest first (by the size of the symbol's stored bars), each to the worker with the least work so far. Each worker then runs the
single-process backfill's own code on its share (``featurestore.backfill.backfill_symbols``: read, compute,
write with its two writer threads), so the rows are those of ``featurestore backfill`` without ``--workers``,
bit for bit, with the same ``now``. Nothing crosses workers but one small report each; a process returns
the reports of its own workers. The view is registered before the flow and the SQL catalog refreshed after
it, on process 0 only (every process has finished writing when the flow ends).

>>> import tempfile
>>> from datetime import datetime, timezone
>>> from featurestore.builtin_views import DAILY_TREND
>>> from featurestore.ingest import ingest_synthetic
>>> store, now = Store(tempfile.mkdtemp()), datetime(2025, 1, 1, tzinfo=timezone.utc)
>>> _ = ingest_synthetic(store, ["BTC/USDT", "ETH/USDT", "SOL/USDT"], "1d", since=datetime(2024, 1, 1, tzinfo=timezone.utc),
...                      now=now)
>>> [report.rows_written for report in run_backfill(store, [DAILY_TREND], now=now, workers=2)]
[{'BTC/USDT': 366, 'ETH/USDT': 366, 'SOL/USDT': 366}]
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import DynamicSource, StatelessSourcePartition
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from featurestore.backfill import BackfillReport, backfill_symbols, prepare_backfill
from featurestore.catalog import refresh_catalog
from featurestore.definitions import FeatureView
from featurestore.store import BarSeries, Store
from streaming.placement import share
from streaming.runner import run_flow

__all__ = ["build_backfill_flow", "run_backfill"]

#: One worker's work for one view: (view name, exchange, symbols).
Share = tuple[str, str, list[str]]


class _ShareSource(DynamicSource[Share]):
    def __init__(self, store: Store, planned: Sequence[tuple[FeatureView, str, list[str]]]) -> None:
        self.store, self.planned = store, planned

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _SharePartition:
        sizes = {(view.name, symbol): sum(path.stat().st_size for path in
                                          self.store.bar_files(BarSeries(exchange, view.timeframe, symbol)))
                 for view, exchange, symbols in self.planned for symbol in symbols}
        mine = set(share([(*pair, size) for pair, size in sizes.items()], worker_count)[worker_index])
        return _SharePartition([(view.name, exchange, [s for s in symbols if (view.name, s) in mine])
                                for view, exchange, symbols in self.planned])


class _SharePartition(StatelessSourcePartition[Share]):
    def __init__(self, shares: list[Share]) -> None:
        self._shares = [share for share in shares if share[2]]

    def next_batch(self) -> list[Share]:
        if not self._shares:
            raise StopIteration
        shares, self._shares = self._shares, []
        return shares


class _ReportSink(DynamicSink[BackfillReport]):
    def __init__(self, reports: list[BackfillReport]) -> None:
        self.reports = reports

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _ReportPartition:
        return _ReportPartition(self.reports)


class _ReportPartition(StatelessSinkPartition[BackfillReport]):
    def __init__(self, reports: list[BackfillReport]) -> None:
        self._reports = reports

    def write_batch(self, items: list[BackfillReport]) -> None:
        self._reports.extend(items)


def build_backfill_flow(store: Store, planned: Sequence[tuple[FeatureView, str, list[str]]], *, now: datetime,
                        start: datetime | None, end: datetime | None, reports: list[BackfillReport]) -> Dataflow:
    """The flow computing ``planned`` (view, exchange, symbols) triples, its workers' reports appended to ``reports``."""
    views = {view.name: view for view, _, _ in planned}

    def compute(share: Share) -> BackfillReport:
        name, exchange, symbols = share
        return backfill_symbols(store, views[name], exchange, symbols, now=now, start=start, end=end, progress=False)

    flow = Dataflow("featurestore_backfill")
    shares = op.input("shares", flow, _ShareSource(store, planned))
    op.output("reports", op.map("backfill", shares, compute), _ReportSink(reports))
    return flow


def run_backfill(store: Store, views: Sequence[FeatureView], *, now: datetime, symbols: list[str] | None = None,
                 exchange: str | None = None, start: datetime | None = None, end: datetime | None = None,
                 workers: int = 1, process_id: int | None = None,
                 addresses: list[str] | None = None) -> list[BackfillReport]:
    """Backfill ``views`` with ``workers`` threads here (a cluster: on every process, after
    ``streaming.cluster.join``, with the same ``now``); return, per view, what this process's workers wrote."""
    planned = [(view, *prepare_backfill(store, view, now=now, symbols=symbols, exchange=exchange)) for view in views]
    reports: list[BackfillReport] = []
    run_flow(build_backfill_flow(store, planned, now=now, start=start, end=end, reports=reports), workers=workers,
             process_id=process_id, addresses=addresses)
    if process_id in (None, 0):
        refresh_catalog(store)
    merged = []
    for view, exchange, chosen in planned:  # each view's report, its symbols in the order asked
        report = BackfillReport(view.name, view.version, exchange)
        for part in reports:
            if part.view == view.name:
                report.add(part)
        report.rows_written = {symbol: report.rows_written[symbol] for symbol in chosen if symbol in report.rows_written}
        merged.append(report)
    return merged
