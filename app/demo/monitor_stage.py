"""The monitor stage of ``featurestore demo``: ``featurestore monitor`` over the last day the flow served, after
the market's regime switch, raising the drift the switch caused (the stage fails if it does not)."""

from __future__ import annotations

from datetime import datetime, timedelta

from app.demo.training_stage import DEMO_MODEL
from app.sdk import FeatureStore
from featurestore.builtin_views import RESEARCH
from featurestore.errors import FeatureStoreError
from featurestore.online import connect
from featurestore.sources.synthetic import Regime
from featurestore.store import Store

__all__ = ["run_monitor_stage"]

#: Inputs that measure volatility: a volatility switch must move them past every threshold.
VOLATILITY_INPUTS = ("research__rv_24", "research__rv_72")


def run_monitor_stage(store: Store, *, now: datetime, regime: Regime) -> None:
    """Monitor the demo model over the last day of signals; print the checks that are not OK."""
    fs = FeatureStore(store.root, clock=lambda: now)
    with connect(store.online_url, readonly=True) as online:
        end = max(row.ts for row in online.rows(RESEARCH.name))  # the replay's clock: its newest row
    print(f"\n== monitor: featurestore monitor --model {DEMO_MODEL} --window 1d --end {end.isoformat()} (the last day "
          f"served, after the regime switch at {regime.at:%Y-%m-%d %H:%M}: volatility x{regime.volatility:g})",
          flush=True)
    report = fs.monitor(DEMO_MODEL, end=end, window=timedelta(days=1))
    lines = report.table().splitlines()
    shown = [line for line in lines[2:] if not line.startswith(("OK", "SKIP"))]
    print("\n".join(lines[:2] + shown[:20]))
    if len(shown) > 20:
        print(f"... and {len(shown) - 20} more not OK; every check in {fs.store.monitor_report_path(DEMO_MODEL)}")
    alerted = {c.subject for c in report.checks if c.status == "ALERT" and c.check == "feature_drift"}
    if regime.volatility != 1.0 and not set(VOLATILITY_INPUTS) <= alerted:
        raise FeatureStoreError(f"monitor did not raise the drift of {VOLATILITY_INPUTS} the regime switch caused")
    print(f"status {report.status} (featurestore monitor exits 3 on ALERT); the dashboard shows it at /ui/models/"
          f"{DEMO_MODEL} of featurestore serve")
