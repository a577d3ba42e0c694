"""The serving stage of ``featurestore demo``: score every symbol once with the production demo model.

The streaming stage leaves the newest ``research`` rows in the online store; a view of the model the online
store lacks for a symbol (one no flow runs) would first be copied from the offline store's newest row
(``featurestore.materialize``). The demo replays history: its rows are older than their TTL against the
wall clock, so they are scored as of the replay's own clock (the newest ``research`` row), which the stage
prints: decisions about a past moment, so signals marked ``replay`` in the replay log
(``<store>/signals/replay.jsonl``). The flow has scored these rows already: the service returns the logged
signals and appends nothing, as a re-run does.

Signing needs a key: when ``$FEATURESTORE_SIGNING_KEY`` is unset the stage uses ``DEMO_SIGNING_KEY``, a
fixed key for the demo only (public, so it proves nothing; never printed).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from datetime import datetime

import polars as pl

from featurestore.materialize import materialize_latest
from featurestore.online import connect
from featurestore.registry import resolve_view
from featurestore.store import Store
from serving.audit import AuditLog
from serving.scorer import Scorer, load_model, resolve_model_dir
from serving.signal_service import SignalService
from serving.signals import SIGNING_KEY_ENV, signing_key, verify_signal

__all__ = ["DEMO_SIGNING_KEY", "demo_signing_key", "run_serving_stage"]

#: The demo's own signing key when none is configured: fixed and public, for the demo only.
DEMO_SIGNING_KEY = "featurestore-demo-signing-key-not-a-secret"


@contextlib.contextmanager
def demo_signing_key() -> Iterator[None]:
    """``$FEATURESTORE_SIGNING_KEY`` as it is, or ``DEMO_SIGNING_KEY`` while inside (the dataflow's signal sink reads
    the key from the environment)."""
    if os.environ.get(SIGNING_KEY_ENV):
        yield
        return
    os.environ[SIGNING_KEY_ENV] = DEMO_SIGNING_KEY
    try:
        yield
    finally:
        del os.environ[SIGNING_KEY_ENV]


def run_serving_stage(store: Store, *, now: datetime, symbols: list[str]) -> None:
    """Score ``symbols`` once with the production demo model; print the signals."""
    from app.demo.training_stage import DEMO_MODEL

    model = load_model(resolve_model_dir(store, DEMO_MODEL))
    with connect(store.online_url) as online:
        for view in model.view_versions:
            lacking = [s for s in symbols if s not in online.get_many(view, symbols)]
            if lacking:
                written = materialize_latest(store, resolve_view(store, view), lacking, online, now=now)
                print(f"the online store lacked view {view} for {len(lacking)} symbol(s): copied {written} newest "
                      f"offline row(s) (featurestore materialize --view {view})")
        primary = next(iter(model.view_versions))
        as_of = max(row.ts for row in online.get_many(primary, symbols).values())
    key = signing_key() if os.environ.get(SIGNING_KEY_ENV) else DEMO_SIGNING_KEY.encode()
    configured = key != DEMO_SIGNING_KEY.encode()
    print(f"scoring as of {as_of.isoformat()} (the newest {primary} row: the replay's clock) with {model.name} "
          f"{model.version}; signing with {'$' + SIGNING_KEY_ENV if configured else 'the demo key (not a secret)'}")
    scorer = Scorer(model, connect(store.online_url, readonly=True))
    with SignalService(scorer, audit=AuditLog(store.replay_audit_path, key=key), mode="replay") as service:
        started = time.perf_counter()
        signals = service.signals(symbols, now=as_of)
        elapsed = time.perf_counter() - started
    with pl.Config(tbl_rows=50, tbl_hide_dataframe_shape=True, tbl_width_chars=160):
        print(pl.DataFrame([{k: s[k] for k in ("symbol", "ts", "score", "side", "previous_side", "action", "quantity")}
                            for s in signals]))
    verified = sum(verify_signal(signal, key=key) for signal in signals)
    print(f"{len(signals)} signal(s) in {elapsed * 1e3:.1f} ms (one batch; signing and audit log included), "
          f"{verified} verify; thresholds long > {service.thresholds.long_above:g}, short < "
          f"{service.thresholds.short_below:g}; audit log {store.replay_audit_path} (a replay: decisions about a past "
          f"moment); no order is sent")
