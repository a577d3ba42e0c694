"""The streaming dataflow: bars -> keyed feature step (warm engine state per symbol) -> sinks.

::

    bars (replay of stored bars | live ccxt polling), partitioned by symbol
      -> key by symbol (streaming.placement: spread evenly over the workers, on the process that reads it)
      -> features (streaming.keyed_state: warm start, duplicates/late counted)
      -> online store  (always)       -> metrics JSON (always)
      -> the row log: parquet parts (``offline_parts``, on by default) -> JSONL file (``jsonl``)
    live bars -> the bar store (``store_bars``, on by default: appended as delta files)
      -> signed signals in the audit log (``model``: every row scored, see ``streaming.sinks.signals``)

A ``StreamConfig`` describes a run in plain JSON-able fields, so every process of a cluster can
build the same flow. Run it from Python, or with Bytewax's own runner, the config in an environment
variable (same config on every process)::

    export FEATURESTORE_STREAM_CONFIG='{"store": "store", "view": "research", "symbols": ["BTC/USDT"], "jsonl": "rows.jsonl"}'
    python -m bytewax.run "streaming.flow:build_flow_from_env()" -w 2
    python -m bytewax.run "streaming.flow:build_flow_from_env()" -r recovery/ -s 10 -b 0   # after: python -m bytewax.recovery recovery/ 4

>>> config = StreamConfig(store="store", view="research", symbols=["BTC/USDT"], start="2024-05-01")
>>> StreamConfig.from_json(config.to_json()) == config
True
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import bytewax.operators as op
import polars as pl
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source

from featurestore.errors import FeatureStoreError
from featurestore.registry import resolve_view
from featurestore.store import Store
from serving.signals import Thresholds
from streaming.clock import Clock, to_datetime, to_ms, wall_clock_ms
from streaming.engine import ViewEngine
from streaming.items import BarItem, FeatureRows
from streaming.keyed_state import feature_logic_builder, warm_from_store
from streaming.placement import Placement
from streaming.sinks import (
    BarStoreSink,
    JsonlSink,
    MetricsSink,
    OfflinePartsSink,
    OnlineSink,
    ProgressSink,
    SignalSink,
)
from streaming.sources.replay import ReplaySource

if TYPE_CHECKING:
    import ccxt

__all__ = ["CONFIG_ENV", "StreamConfig", "build_flow", "build_flow_from_env"]

CONFIG_ENV = "FEATURESTORE_STREAM_CONFIG"


def _moment(text: str | None) -> int | None:
    if text is None:
        return None
    moment = datetime.fromisoformat(text)
    return to_ms(moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment)


@dataclass(frozen=True)
class StreamConfig:
    """One streaming run. Times are ISO-8601 strings (UTC when no offset is given); paths are strings.

    ``source``: ``replay`` (stored bars with ``start <= ts < until``, in windows of ``batch`` bars, paced
    by ``speed``, 0 = as fast as possible) or ``ccxt`` (live closed bars from ``exchange``, polled every
    ``poll_interval_s`` at most; ``start`` overrides where it begins, ``until`` ends it).
    ``exchange`` for replay is the stored series' exchange (default: the only one stored). ``progress``: a
    replay shows a bar of the bars replayed on a terminal (``streaming.sinks.progress``).
    ``view`` is a name, or ``name@version`` for a registered older version (``featurestore.registry``).
    ``metrics`` defaults to ``<store>/stream/metrics-<view name>.json``. ``offline_parts``: log every row computed
    as parquet parts under ``kind=stream/`` (the row log ``featurestore consistency`` checks; on by default).
    ``model``: a published model directory (resolve a registry name first, so every process scores with the
    same version); each row becomes a signal in ``audit`` (default: a replay's ``<store>/signals/replay.jsonl``,
    marked ``mode: replay``; a live stream's ``<store>/signals/signals.jsonl``), sides by ``thresholds``
    ([long_above, short_below], default the model's), ``max_age_s`` per view as ``Scorer``'s.
    """

    store: str
    view: str
    symbols: list[str]
    source: Literal["replay", "ccxt"] = "replay"
    exchange: str | None = None
    definitions: str | None = None
    start: str | None = None
    until: str | None = None
    batch: int = 1000
    speed: float = 0.0
    poll_interval_s: float = 5.0
    jsonl: str | None = None
    offline_parts: bool = True
    store_bars: bool = True
    metrics: str | None = None
    model: str | None = None
    audit: str | None = None
    thresholds: list[float] | None = None
    size: float = 1.0
    max_age_s: dict[str, float] | None = None
    progress: bool = False

    def __post_init__(self) -> None:
        if self.source not in ("replay", "ccxt"):
            raise FeatureStoreError(f"unknown stream source {self.source!r}: use 'replay' or 'ccxt'")
        if not self.symbols:
            raise FeatureStoreError("a stream needs at least one symbol")
        _moment(self.start), _moment(self.until)  # refuse a malformed time now, not in a worker

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> StreamConfig:
        data = json.loads(text)
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise FeatureStoreError(f"unknown stream config field(s) {unknown}; known: {[f.name for f in fields(cls)]}")
        return cls(**data)

    @property
    def metrics_path(self) -> Path:
        return Path(self.metrics) if self.metrics else Store(self.store).stream_metrics_path(self.view.partition("@")[0])


def build_flow(config: StreamConfig, *, clock: Clock = wall_clock_ms,
               client_factory: Callable[[], ccxt.Exchange] | None = None,
               source: Source[BarItem] | None = None, placement: Placement | None = None) -> Dataflow:
    """The dataflow for ``config``. ``clock`` stamps writes and paces sources; ``client_factory`` builds
    the ccxt client of each live partition (default: ``make_client(config.exchange)``); ``source``
    replaces the configured source (tests feed hand-made bars through the real steps); ``placement``:
    this process's place in the cluster and its worker count (the default, one worker of one process,
    is right for any run, only slower on several workers)."""
    store = Store(config.store)
    view = resolve_view(store, config.view, config.definitions)
    names = ViewEngine(view).feature_names
    placement = placement or Placement()
    keys = placement.keys(config.symbols)
    local = placement.local(keys)
    if config.source == "replay":
        exchange = store.resolve_exchange(view.timeframe, config.exchange)
        bars_source = source or ReplaySource(store, exchange, view.timeframe, local,
                                             start_ms=_moment(config.start), end_ms=_moment(config.until),
                                             batch=config.batch, speed=config.speed, clock=clock)
    else:
        from featurestore.sources.exchange import make_client  # imports ccxt (slow): only for live runs
        from streaming.sources.live import LiveSource, exchange_id

        exchange = exchange_id(config.exchange)
        factory = client_factory or (lambda: make_client(exchange))
        bars_source = source or LiveSource(store, factory, view.timeframe, local, clock=clock,
                                           since_ms=_moment(config.start), until_ms=_moment(config.until),
                                           poll_interval_s=config.poll_interval_s)
    flow = Dataflow(f"featurestore_stream_{view.name}")
    bars = op.input("bars", flow, bars_source)
    if config.source == "ccxt" and config.store_bars:
        op.output("bar_store", bars, BarStoreSink(store, exchange, view.timeframe))
    # keyed a batch at a time (what ``op.key_on`` does item by item, with two Python calls each)
    keyed = op.flat_map_batch("by_symbol", bars, lambda items: [(keys.get(i.symbol, i.symbol), i) for i in items])
    rows = op.stateful_batch("features", keyed, feature_logic_builder(view, warm_from_store(store, exchange)))
    op.output("online", rows, OnlineSink(store.online_url, view, names, clock))
    # the one metrics partition needs each item's counts, not its rows: in a cluster they would cross processes
    counts = op.map_value("counts", rows, lambda item: FeatureRows(item.symbol, [], [], item.counts))
    op.output("metrics", counts, MetricsSink(config.metrics_path, view, clock=clock))
    if config.jsonl:
        op.output("jsonl", rows, JsonlSink(Path(config.jsonl), view, names))
    if config.progress and config.source == "replay":
        window = store.scan_bars(exchange, view.timeframe, config.symbols).filter(
            pl.col("ts").dt.epoch("ms").is_between(_moment(config.start) or 0, _moment(config.until) or 2**62,
                                                   closed="left"))
        op.output("progress", rows, ProgressSink(window.select(pl.len()).collect().item(), f"replay {view.name}"))
    if config.offline_parts:
        op.output("offline_parts", rows, OfflinePartsSink(store, view, names, exchange, keys, clock=clock, local=local))
    if config.model:
        replay = config.source == "replay"
        op.output("signals", rows, SignalSink(
            store.root, view, names, config.model,
            config.audit or (store.replay_audit_path if replay else store.audit_path), mode="replay" if replay else "live",
            start=to_datetime(_moment(config.start)) if config.start else None,
            end=to_datetime(_moment(config.until)) if config.until else None,
            thresholds=Thresholds(*config.thresholds) if config.thresholds else None, size=config.size,
            max_age={v: timedelta(seconds=s) for v, s in config.max_age_s.items()} if config.max_age_s else None))
    return flow


def build_flow_from_env() -> Dataflow:
    """``build_flow`` for the ``StreamConfig`` JSON in ``$FEATURESTORE_STREAM_CONFIG`` (for ``python -m bytewax.run``)."""
    text = os.environ.get(CONFIG_ENV)
    if not text:
        raise FeatureStoreError(f"set {CONFIG_ENV} to a stream config as JSON, e.g. "
                                f"{StreamConfig(store='store', view='research', symbols=['BTC/USDT']).to_json()}")
    return build_flow(StreamConfig.from_json(text))
