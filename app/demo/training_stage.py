"""The training stage of ``featurestore demo``: a regressor on ``research``, evaluated walk-forward against
buy-and-hold, exported to ONNX behind the parity gate (its reference distributions beside it), and promoted.

The demo stores a year of 1-minute bars for five symbols (2.6M feature rows). To stay within about a
minute on two cores the stage trains on the ``DEMO_DAYS`` days before the market's regime switch, of every
symbol (about 216k rows): a window, not a subsample, so the backtest sees every consecutive bar. The
model reads one view, so the flow can score every row it streams (a second view's online row would have
to be as of each replayed bar).
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from pathlib import Path

from featurestore.builtin_views import RESEARCH
from featurestore.errors import FeatureStoreError
from featurestore.offline import stored_range
from featurestore.store import Store

__all__ = ["DEMO_DAYS", "DEMO_LABEL", "DEMO_MODEL", "DEMO_THRESHOLD", "run_training_stage"]

DEMO_DAYS = 30
DEMO_MODEL = "demo_research_reg"
DEMO_LABEL = "future_ret:h=1"
#: Trade only when the predicted one-minute log return exceeds 3 bps in size: trading the bare sign every
#: minute pays 5 bps per side on ~0.6 position changes a bar, far more than any edge the model has.
DEMO_THRESHOLD = 3e-4


def run_training_stage(store: Store, *, now: datetime, symbols: list[str], end: datetime) -> Path:
    """Train on the rows before ``end``, evaluate, export and promote the demo model; print the evaluation and
    the ONNX parity; return the model's directory."""
    from training.labels import parse_label
    from training.model import ModelParams
    from training.registry import models_root, promote
    from training.train import summary_table, train_model

    exchange = store.resolve_exchange(RESEARCH.timeframe, "synthetic" if store.series(
        exchange="synthetic", timeframe=RESEARCH.timeframe) else None)
    if not all(stored_range(store, RESEARCH, exchange, symbol).last for symbol in symbols):
        raise FeatureStoreError(f"view research is not backfilled for every symbol of {symbols}; run the backfill stage")
    start = end - timedelta(days=DEMO_DAYS)
    print(f"training set: research, every 1m row from {start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M}, label "
          f"{DEMO_LABEL}, {len(symbols)} symbols", flush=True)
    started = time.perf_counter()
    result = train_model(store, views=[RESEARCH], label=parse_label(DEMO_LABEL), name=DEMO_MODEL,
                         models_root=models_root(store), now=now, symbols=symbols, start=start, end=end,
                         exchange=exchange,
                         params=ModelParams(num_boost_round=200, num_threads=2), folds=3,
                         threshold=DEMO_THRESHOLD)
    print(summary_table(result))
    promote(models_root(store), result.name, result.version)
    print(f"promoted {result.name} {result.version} to production in {time.perf_counter() - started:.1f} s "
          f"(featurestore models list --store {store.root})")
    return result.path
