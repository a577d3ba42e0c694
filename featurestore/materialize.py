"""Materialize: copy the newest offline feature row of each symbol into the online store.

The streaming flow keeps the views it runs current in the online store. A view that no flow runs (in the
demo: ``daily_trend``, one row a day) can be served from its backfill instead: ``materialize_latest``
copies each symbol's newest stored row of the view's current definitions (``ts``, ``view_version`` and
values unchanged; ``updated_at = now``). The online store's upsert never moves a row back in time, so a
newer row already written by a flow is kept. Run it again after each backfill (``featurestore
materialize --view daily_trend``); the scorer's max age refuses the row once it is older than the TTL.

>>> import tempfile
>>> from datetime import datetime, timezone
>>> from featurestore.backfill import backfill
>>> from featurestore.builtin_views import DAILY_TREND
>>> from featurestore.ingest import ingest_synthetic
>>> from featurestore.online import connect
>>> store = Store(tempfile.mkdtemp())
>>> now = datetime(2024, 3, 1, tzinfo=timezone.utc)
>>> _ = ingest_synthetic(store, ["BTC/USDT"], "1d", since=datetime(2024, 1, 1, tzinfo=timezone.utc), until=now, now=now)
>>> _ = backfill(store, DAILY_TREND, now=now, progress=False)
>>> with connect(store.online_url) as online:
...     materialize_latest(store, DAILY_TREND, ["BTC/USDT"], online, now=now)
...     online.latest("daily_trend", "BTC/USDT").ts
1
datetime.datetime(2024, 3, 1, 0, 0, tzinfo=datetime.timezone.utc)
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from featurestore.definitions import FeatureView
from featurestore.errors import FeatureStoreError
from featurestore.offline import read_symbol_features
from featurestore.online import OnlineRow, OnlineStore
from featurestore.store import Store

__all__ = ["materialize_latest"]


def materialize_latest(store: Store, view: FeatureView, symbols: Sequence[str], online: OnlineStore, *,
                       now: datetime, exchange: str | None = None) -> int:
    """Write each symbol's newest offline row of ``view`` to ``online``; return how many rows changed
    (a newer online row is kept). Raises, naming the symbols, when one has no stored row."""
    exchange = store.resolve_exchange(view.timeframe, exchange)
    rows, absent = [], []
    for symbol in symbols:
        stored = read_symbol_features(store, view, exchange, symbol)
        if stored is None or stored.is_empty():
            absent.append(symbol)
            continue
        last = stored.row(-1, named=True)  # stored sorted by ts
        rows.append(OnlineRow(view.name, symbol, last["ts"], view.version,
                              {name: last[name] for name in view.feature_names}, now))
    if absent:
        raise FeatureStoreError(f"no offline rows of view {view.name!r} v{view.version} on {exchange} for "
                                f"{', '.join(absent)}; run `featurestore backfill --view {view.name}`")
    return online.put_many(rows)
