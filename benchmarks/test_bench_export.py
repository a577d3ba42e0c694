"""Point-in-time export: 1M entity rows against 10M feature rows of two views, to a parquet file, against bare
as-of joins of the same data in memory; and LightGBM training time on the exported ``research`` features.

- ``export_parquet``: ``write_training_set(path, store, [RESEARCH, INDICATORS], entities,
  options=ExportOptions(labels=[future_ret:h=1], ttl={research: 2m, indicators: 5m}))`` from the offline store of ``export_data``
  (10 symbols x 500k one-minute bars with a two-day gap, both views backfilled: 10M feature rows) to a zstd
  parquet file plus its sidecar. Per symbol: read both views' stored rows, two point-in-time joins, read the
  bars, compute and attach the label and its uniqueness weights, write. Everything counted.
- The entities (``ENTITY_ROWS``, in memory, in random order): a random symbol and a random event time with
  microseconds between the first bar's open and one day after the last close; ``ON_CLOSE`` of them exactly
  on a bar close (= a feature row's ``ts``: the ``<=`` edge). Those in the gap or after the end are beyond
  the TTL (null features); the counts are printed.
- Baselines, on the same entities and the same stored rows already in memory (no reading, no label, no
  writing: they favour the baselines), sorting included, output checked equal to the library's columns:
  - ``polars_join_asof``: sort the entities by (symbol, event_ts), then per view one bare
    ``join_asof(on=event_ts, by="symbol", strategy="backward", tolerance=ttl)`` against the view's frame as
    stored (already sorted by (symbol, ts)): the limit. Target: the export within 2x of its time.
  - ``pandas_merge_asof``: the same with ``pd.merge_asof(by="symbol", tolerance=ttl)``, which needs both sides
    sorted by time (the entities and each view's 5M rows are sorted every round).
- After the timed export rounds one more export runs with timers around its phases (library functions are
  wrapped, not changed) and under cProfile: the breakdown is printed and added to the end-of-session summary.
- ``lightgbm_fit_research`` (info, no target): ``training.model.fit_model`` on the exported rows with a label
  (~1M x the 14 ``research`` features, target ``future_ret_h1``, uniqueness weights), 300 rounds, no early
  stopping, ``num_threads=2``; seconds and rows/s in the summary. On this shared 2-core machine the two OpenMP
  threads wait for each other whenever another process takes a core: with another test suite running a fit took
  10-40x longer (full scale: 6.8 s quiet, 70-265 s loaded). Only a quiet fastest round means anything.

How to run and keep results: see ``benchmarks/conftest.py``
(``.venv/bin/python -m pytest benchmarks -q --benchmark-enable --benchmark-only -s -k bench_export``).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pytest
from phases import PhaseClock, TimedLazy, phase_table, run_profiled

import featurestore.export
import featurestore.label_join
from featurestore.builtin_views import INDICATORS, RESEARCH
from featurestore.entities import EVENT_TS
from featurestore.export import ExportOptions, training_set, write_training_set
from featurestore.pit_join import feature_column, point_in_time_join
from featurestore.store import Store
from training.labels import parse_label
from training.model import ModelParams, fit_model

ENTITY_ROWS = max(1_000, round(1_000_000 * float(os.environ.get("BENCH_SCALE", "1"))))  # checked by conftest
ON_CLOSE = 0.1  # share of entity rows exactly on a bar close
TAIL = timedelta(days=1)  # entity times run this far past the last close (beyond every TTL)
VIEWS = (RESEARCH, INDICATORS)
TTL = {"research": timedelta(minutes=2), "indicators": timedelta(minutes=5)}
LABEL = parse_label("future_ret:h=1")
OPTIONS = ExportOptions(labels=[LABEL], ttl=TTL)
EXPORT_ROUNDS = 5
POLARS_ROUNDS = 5
PANDAS_ROUNDS = 3
FIT_ROUNDS = 2
REFERENCE_SECONDS: list[float] = []  # the reference's training_set run, reported by test_export_parquet
FIT_PARAMS = ModelParams(num_boost_round=300, early_stopping_rounds=0, num_threads=2)  # all 300 trees, every row


# -- data ------------------------------------------------------------------------------------------------

def make_entities(data, rows: int, seed: int = 11) -> pl.DataFrame:
    """``rows`` entity rows in random order: (symbol, event_ts) with microsecond event times from the first
    bar's open to ``TAIL`` after the last close."""
    rng = np.random.default_rng(seed)
    first_open = data.features["research"]["ts"].min() - timedelta(minutes=1)  # rows are stamped at the close
    epoch_us = lambda moment: int(moment.timestamp()) * 1_000_000  # noqa: E731
    ts = rng.integers(epoch_us(first_open), epoch_us(data.now + TAIL), rows)
    on_close = rng.random(rows) < ON_CLOSE
    ts[on_close] -= ts[on_close] % 60_000_000
    return pl.DataFrame({
        "symbol": rng.choice(np.array(data.symbols, dtype=object), rows),
        "event_ts": pl.from_epoch(pl.Series(ts), time_unit="us").dt.replace_time_zone("UTC"),
    }, schema={"symbol": pl.String, "event_ts": EVENT_TS})


@pytest.fixture(scope="module")
def entities(export_data) -> pl.DataFrame:
    return make_entities(export_data, ENTITY_ROWS)


def _export(data, entities: pl.DataFrame, path: Path):
    return write_training_set(path, data.store, VIEWS, entities, options=OPTIONS)


@pytest.fixture(scope="module")
def reference(export_data, entities: pl.DataFrame) -> pl.DataFrame:
    """The training set in memory (``training_set``: one run, its time reported by ``test_export_parquet``)."""
    start = time.perf_counter()
    frame = training_set(export_data.store, VIEWS, entities, options=OPTIONS)
    seconds = time.perf_counter() - start
    REFERENCE_SECONDS.append(seconds)
    assert frame.height == entities.height
    return frame


# -- baselines -------------------------------------------------------------------------------------------

def _renamed(view, key: str) -> list[pl.Expr]:
    """A view's stored columns as exported (``view__ts``, ``view__<feature>``), plus its ``ts`` as ``key`` (us)."""
    return [pl.col("symbol"), pl.col("ts").cast(EVENT_TS).alias(key), pl.col("ts").alias(feature_column(view.name, "ts")),
            *(pl.col(f).alias(feature_column(view.name, f)) for f in view.feature_names)]


def polars_join_asof(entities: pl.DataFrame, features: dict[str, pl.DataFrame]) -> pl.DataFrame:
    """The bare polars as-of joins: sort the entities, then one ``join_asof`` per view (rows as stored)."""
    out = entities.sort("symbol", "event_ts", maintain_order=True)
    for view in VIEWS:
        rows = features[view.name]
        out = out.join_asof(rows.select(_renamed(view, "event_ts")), on="event_ts", by="symbol",
                            strategy="backward", tolerance=TTL[view.name], check_sortedness=False)
    return out


def pandas_merge_asof(entities: pd.DataFrame, features: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """``pd.merge_asof`` per view; both sides sorted by time first (as merge_asof requires)."""
    out = entities.sort_values("event_ts", kind="stable")
    for view in VIEWS:
        rows = features[view.name].sort_values("__key", kind="stable")
        out = pd.merge_asof(out, rows, left_on="event_ts", right_on="__key", by="symbol", direction="backward",
                            tolerance=pd.Timedelta(TTL[view.name])).drop(columns="__key")
    return out


@pytest.fixture(scope="module")
def pandas_features(export_data) -> dict[str, pd.DataFrame]:
    """Each view's stored rows as pandas, named as exported, with the join key in the entities' unit."""
    return {view.name: export_data.features[view.name].select(_renamed(view, "__key")).to_pandas() for view in VIEWS}


def test_baseline_polars_join_asof(benchmark, bench_record, export_data, entities: pl.DataFrame,
                                   reference: pl.DataFrame):
    out = benchmark.pedantic(polars_join_asof, args=(entities, export_data.features), rounds=POLARS_ROUNDS,
                             warmup_rounds=1)
    assert out.equals(reference.select(out.columns))
    bench_record("polars_join_asof", f"bare polars join_asof x2 (in memory, {entities.height / 1e6:.1f}M rows)",
                 bars=entities.height, unit="entity rows")


def test_baseline_pandas_merge_asof(benchmark, bench_record, entities: pl.DataFrame, reference: pl.DataFrame,
                                    pandas_features: dict[str, pd.DataFrame]):
    left = entities.to_pandas()
    out = benchmark.pedantic(pandas_merge_asof, args=(left, pandas_features), rounds=PANDAS_ROUNDS, warmup_rounds=1)
    got = pl.from_pandas(out.sort_values(["symbol", "event_ts"], kind="stable"))
    want = reference.select(got.columns)
    assert got.height == want.height
    for name in got.columns:  # pandas: NaN for null, its own datetime units
        assert got[name].cast(want[name].dtype).equals(want[name], check_names=False), name
    bench_record("pandas_merge_asof", f"pandas merge_asof x2 (in memory, {entities.height / 1e6:.1f}M rows)",
                 bars=entities.height, unit="entity rows")


# -- the library: export ---------------------------------------------------------------------------------

def test_export_parquet(benchmark, bench_record, bench_note, export_data, entities: pl.DataFrame,
                        reference: pl.DataFrame, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "train.parquet"
    result = benchmark.pedantic(_export, args=(export_data, entities, path), rounds=EXPORT_ROUNDS, warmup_rounds=1)
    assert result.rows == entities.height
    written = pl.read_parquet(path)
    assert written.equals(reference)
    bench_record("export_parquet", f"write_training_set 2 views + label ({entities.height / 1e6:.1f}M entity rows, "
                 f"{export_data.feature_rows / 1e6:.0f}M feature rows)", bars=entities.height, unit="entity rows")
    if benchmark.stats is None:
        return
    best = benchmark.stats.stats.min
    research = feature_column("research", "ret_1")
    beyond = reference.filter(pl.col(feature_column("research", "ts")).is_null()).height
    in_gap = reference.filter(pl.col("event_ts").is_between(export_data.gap_start + TTL["research"],
                                                            export_data.gap_end, closed="left")).height
    bench_note(f"export: {entities.height:,} entity rows ({ON_CLOSE:.0%} exactly on a bar close; {beyond:,} with no "
               f"research row within its TTL, {in_gap:,} of them in the gap; {reference[research].null_count():,} "
               f"null research__ret_1) x {export_data.feature_rows:,} feature rows of 2 views + "
               f"{export_data.bars:,} bars for the label: {best:.2f} s best, "
               f"{entities.height / best / 1e6:.2f}M entity rows/s; file {path.stat().st_size / 2**20:.0f} MiB")
    if REFERENCE_SECONDS:
        bench_note(f"  the same export in memory (training_set, no file; one run, before the timed rounds): "
                   f"{REFERENCE_SECONDS[0]:.2f} s")
    for line in _breakdown(export_data, entities, tmp_path / "profiled.parquet", monkeypatch, best):
        bench_note(line)
    for line in _variants(export_data, entities, reference, tmp_path / "polars.parquet"):
        bench_note(line)


# -- where the export's time goes ------------------------------------------------------------------------

class _TimedWriter:
    def __init__(self, writer, clock: PhaseClock) -> None:
        self._writer, self._clock = writer, clock

    def write_table(self, table) -> None:
        with self._clock.phase("write parquet"):
            self._writer.write_table(table)

    def close(self) -> None:
        with self._clock.phase("write parquet"):
            self._writer.close()


_PHASES = (  # (phase, what it covers); indented phases are part of the one above
    ("plan", "_plan: checks, stored symbols, entity nulls and symbols"),
    ("entities", "per symbol: filter the entities, collect, sort by event_ts"),
    ("read features", "read_features(...).filter(ts window).collect(), 2 views"),
    ("point-in-time join", "point_in_time_join, 2 views (sorts + join_asof + restore order)"),
    ("read bars", "Store.scan_bars + collect (for the label)"),
    ("label", "attach_labels: compute, as-of attach, uniqueness weights"),
    ("  label join", "point_in_time_join of the label rows"),
    ("write parquet", "ParquetWriter (zstd) write_table + close, in the writer thread: overlaps the phases above"),
)


def _breakdown(data, entities: pl.DataFrame, path: Path, monkeypatch: pytest.MonkeyPatch,
               best_s: float) -> list[str]:
    """One more export with timers around its phases (library functions wrapped, not changed), under cProfile."""
    clock = PhaseClock()
    module = featurestore.export
    read_features, scan_bars = module.read_features, Store.scan_bars
    join, open_writer = module.point_in_time_join, module._open_writer
    plan_entities = module._plan

    def timed_join(*args, **kwargs):
        with clock.phase("  label join" if kwargs.get("view") == "__label" else "point-in-time join"):
            return join(*args, **kwargs)

    def timed_plan(*args, **kwargs):
        with clock.phase("plan"):
            plan = plan_entities(*args, **kwargs)
        if plan.entities is None:
            return plan
        return dataclasses.replace(plan, entities=TimedLazy(plan.entities, clock, "entities"))

    with monkeypatch.context() as patch:
        patch.setattr(module, "_plan", timed_plan)
        patch.setattr(module, "read_features", lambda *a, **k: TimedLazy(read_features(*a, **k), clock, "read features"))
        patch.setattr(Store, "scan_bars", lambda *a, **k: TimedLazy(scan_bars(*a, **k), clock, "read bars"))
        patch.setattr(module, "point_in_time_join", timed_join)
        patch.setattr(featurestore.label_join, "point_in_time_join", timed_join)
        patch.setattr(module, "attach_labels", clock.wrap("label", module.attach_labels))
        patch.setattr(module, "_open_writer", lambda *a, **k: _TimedWriter(open_writer(*a, **k), clock))
        total, stats = run_profiled(lambda: _export(data, entities, path))
    lines = [f"export, where the time goes (one extra run with timers and cProfile: {total:.2f} s; the fastest "
             f"timed round took {best_s:.2f} s):"]
    lines += phase_table(clock, _PHASES, total=total, overlapping=["write parquet"],
                         other="to_arrow, cast, waiting for the writer, close, sidecar, loop, profiling", stats=stats)
    return lines


def _variants(data, entities: pl.DataFrame, reference: pl.DataFrame, path: Path) -> list[str]:
    """One run each of cheaper variants of the export, to see what the joins alone cost and what writing costs."""

    def timed(function: Callable, *args, **kwargs) -> float:
        start = time.perf_counter()
        function(*args, **kwargs)
        return time.perf_counter() - start

    def fastest(function: Callable, *args, **kwargs) -> float:
        return min(timed(function, *args, **kwargs) for _ in range(5))

    no_label = timed(training_set, data.store, VIEWS, entities, options=ExportOptions(ttl=TTL))
    polars_write = timed(reference.write_parquet, path, compression="zstd")
    # One symbol's chunk (sorted by event_ts, as the export joins it) against one view's rows of that symbol.
    symbol = data.symbols[0]
    chunk = entities.filter(pl.col("symbol") == symbol).sort("event_ts", maintain_order=True)
    per_view = defaultdict(float)
    for view in VIEWS:
        rows = data.features[view.name].filter(pl.col("symbol") == symbol)
        right = rows.select(_renamed(view, "event_ts"))
        options = {"on": "event_ts", "strategy": "backward", "tolerance": TTL[view.name], "check_sortedness": False}
        per_view["point_in_time_join"] += fastest(
            point_in_time_join, chunk, rows.select("symbol", "ts", *view.feature_names, "created_at"),
            view=view.name, features=view.feature_names, ttl=TTL[view.name])
        per_view["bare join_asof, by=symbol"] += fastest(chunk.join_asof, right, by="symbol", **options)
        per_view["bare join_asof, no by (one symbol)"] += fastest(chunk.join_asof, right.drop("symbol"), **options)
        per_view["re-sort of the (sorted) rows"] += fastest(right.sort, "symbol", "event_ts")
    return [
        "export variants (one run each unless said, same session):",
        f"  training_set without the label, in memory (read both views + 2 point-in-time joins): {no_label:.2f} s",
        f"  polars DataFrame.write_parquet(zstd) of the whole exported frame: {polars_write:.2f} s "
        f"({path.stat().st_size / 2**20:.0f} MiB)",
        f"  one symbol ({chunk.height:,} entity rows x {rows.height:,} rows a view), both views, best of 5: "
        + "; ".join(f"{name} {seconds * 1e3:.0f} ms" for name, seconds in per_view.items()),
    ]


# -- training time (info) --------------------------------------------------------------------------------

def test_lightgbm_fit_research(benchmark, bench_record, bench_note, reference: pl.DataFrame):
    frame = reference.filter(pl.col(LABEL.name).is_not_null())
    features = [feature_column("research", f) for f in RESEARCH.feature_names]
    X = frame.select(features).to_numpy().astype(np.float64)  # nulls -> NaN (LightGBM's missing values)
    y = frame[LABEL.name].to_numpy()
    weight = frame[LABEL.weight_column].to_numpy()
    kwargs = {"feature_names": features, "params": FIT_PARAMS, "weight": weight, "event_ts": frame["event_ts"]}
    boosters = []

    def fit():
        boosters.append(fit_model(X, y, **kwargs))

    benchmark.pedantic(fit, rounds=FIT_ROUNDS, warmup_rounds=0)
    assert boosters[0].num_trees() == FIT_PARAMS.num_boost_round
    assert len({b.model_to_string() for b in boosters}) == 1  # deterministic: same rows, same model
    bench_record("lightgbm_fit_research", f"LightGBM fit_model research ({X.shape[0] / 1e6:.2f}M rows)",
                 bars=X.shape[0], unit="rows")
    if benchmark.stats is not None:
        best, median = benchmark.stats.stats.min, benchmark.stats.stats.median
        bench_note(f"LightGBM fit_model on the exported research features ({X.shape[0]:,} rows x {X.shape[1]} "
                   f"features, {FIT_PARAMS.num_boost_round} rounds, num_threads={FIT_PARAMS.num_threads}, no early "
                   f"stopping): {best:.2f} s best ({median:.2f} s median), {X.shape[0] / best / 1e3:.0f}k rows/s, "
                   f"{best / FIT_PARAMS.num_boost_round * 1e3:.0f} ms per tree (info, no target)")
