"""Backfill throughput (bar-rows/s) of the ``research`` view (14 features on 1m bars) over 10M bars, against
baselines from the same session.

- ``backfill_research``: ``backfill(store, RESEARCH, ...)`` into a fresh store directory per round (hard links to
  the stored bars of ``research_data``: 50 symbols x 200k one-minute bars): per symbol, read the bars,
  ``compute_symbol``, write the feature parquet (atomically, with fsync); then the catalog. Everything counted.
- Baselines, on the same bars already in memory (no reading, no writing: they favour the baselines):
  - ``pandas_research``: the same 14 features as the straightforward pandas code a quant would write
    (``pandas_research`` below; ``test_pandas_research_matches_polars`` and the benchmark itself check it
    gives the same values to 1e-9 relative, so it is the same work);
  - ``polars_select_over``: the bare polars ``select`` of the view's expressions with ``.over("symbol")`` on the
    multi-symbol frame (no store, no framework): the limit;
  - ``polars_select_per_symbol``: the same ``select`` without ``.over``, once per symbol's frame (for reference).
- After the timed rounds, one more backfill runs with timers around its phases (and under cProfile) and the
  breakdown (read bars / compute / write / ...) is printed and added to the end-of-session summary.

How to run and keep results: see ``benchmarks/conftest.py``.
"""

from __future__ import annotations

import itertools
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pytest
from phases import PhaseClock, TimedLazy, phase_table, run_profiled

import featurestore.backfill
import featurestore.offline
from featurestore.backfill import backfill
from featurestore.builtin_views import RESEARCH
from featurestore.definitions import FeatureView
from featurestore.offline import read_symbol_features
from featurestore.sources.synthetic import synthetic_bars
from featurestore.store import Store

BACKFILL_ROUNDS = 5
PANDAS_ROUNDS = 3  # ~8 s a round at full scale
SELECT_ROUNDS = 5
STEP = timedelta(minutes=1)  # RESEARCH is a 1m view: a feature row is stamped at its bar's close
RTOL, ATOL = 1e-9, 1e-13  # pandas vs polars; ATOL only matters for values near 0 (e.g. close / ema - 1)


# -- the pandas baseline ---------------------------------------------------------------------------------

def pandas_research(bars: pd.DataFrame) -> pd.DataFrame:
    """The research view in plain pandas; ``bars`` sorted by (symbol, ts). Columns as ``RESEARCH.compute``."""
    g = bars.groupby("symbol", sort=False)
    close, volume = bars["close"], bars["volume"]
    out = pd.DataFrame({"symbol": bars["symbol"], "ts": bars["ts"] + pd.Timedelta(minutes=1)})
    for n in (1, 3, 6, 12):
        out[f"ret_{n}"] = np.log(close / g["close"].shift(n))
    for n in (12, 24, 48):
        out[f"ema_{n}"] = g["close"].ewm(span=n, adjust=False, min_periods=n).mean().droplevel(0)
    for n in (12, 24, 48):
        out[f"close_ema_{n}_ratio"] = close / out[f"ema_{n}"] - 1.0
    ret_1 = out.groupby("symbol", sort=False)["ret_1"]
    out["rv_24"] = ret_1.rolling(24).std().droplevel(0)
    out["rv_72"] = ret_1.rolling(72).std().droplevel(0)
    out["log_volume"] = np.log1p(volume)
    out["adv_30"] = g["volume"].rolling(30).mean().droplevel(0)
    return out


def assert_same_values(pandas_rows: pd.DataFrame, polars_rows: pl.DataFrame) -> None:
    """Same keys, same nulls (pandas: NaN), every value within RTOL relative (ATOL absolute near 0)."""
    assert list(pandas_rows.columns) == polars_rows.columns
    assert pandas_rows["symbol"].tolist() == polars_rows["symbol"].to_list()
    pandas_ts, polars_ts = pandas_rows["ts"].dt.tz_convert(None), polars_rows["ts"].dt.replace_time_zone(None)
    assert (pandas_ts.to_numpy() == polars_ts.to_numpy()).all()
    for name in RESEARCH.feature_names:
        got, want = pandas_rows[name].to_numpy(dtype=np.float64), polars_rows[name].to_numpy()
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"{name}: nulls differ")
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, equal_nan=True, err_msg=name)


def _polars_reference(per_symbol: list[pl.DataFrame]) -> pl.DataFrame:
    return pl.concat([RESEARCH.compute_symbol(frame) for frame in per_symbol])


def test_pandas_research_matches_polars():
    """The pandas baseline does the same work: equal to the view's polars values on awkward series too (runs
    under plain ``pytest benchmarks``; ``test_baseline_pandas_research`` repeats the check on the full data)."""
    since = datetime(2024, 1, 1, tzinfo=UTC)
    bars = synthetic_bars(["BTC/USDT", "ETH/USDT"], "1m", since=since, until=since + timedelta(minutes=3000))
    flat = pl.col("ts").is_between(since + timedelta(minutes=500), since + timedelta(minutes=700))
    bars = bars.with_columns(  # a flat stretch (zero returns, zero variance) and zero-volume bars
        *(pl.when(flat).then(100.0).otherwise(pl.col(c)).alias(c) for c in ("open", "high", "low", "close")),
        volume=pl.when(pl.col("ts").dt.minute() % 7 == 0).then(0.0).otherwise(pl.col("volume")))
    short = synthetic_bars(["SOL/USDT"], "1m", since=since, until=since + timedelta(minutes=50))  # < every window
    bars = pl.concat([bars, short]).sort("symbol", "ts")
    per_symbol = bars.partition_by("symbol", maintain_order=True)
    assert_same_values(pandas_research(bars.to_pandas()), _polars_reference(per_symbol))


# -- fixtures --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def reference(research_data) -> pl.DataFrame:
    """The view's rows for every bar (``compute_symbol`` per symbol, concatenated)."""
    return _polars_reference(research_data.per_symbol)


@pytest.fixture(scope="module")
def pandas_bars(research_data) -> pd.DataFrame:
    return research_data.bars.select("symbol", "ts", "open", "high", "low", "close", "volume").to_pandas()


class FreshStores:
    """For ``benchmark.pedantic``: a new store per round (hard links to the bars), removed after the round."""

    def __init__(self, data, base: Path) -> None:
        self.data, self.base, self.counter = data, base, itertools.count()

    def setup(self) -> tuple[tuple[Store], dict[str, object]]:
        return (self.data.fresh_store(self.base / f"round{next(self.counter)}"),), {}

    def teardown(self, store: Store) -> None:
        shutil.rmtree(store.root, ignore_errors=True)


# -- the library: backfill -------------------------------------------------------------------------------

def test_backfill_research(benchmark, bench_record, bench_note, research_data, tmp_path: Path,
                           monkeypatch: pytest.MonkeyPatch):
    stores = FreshStores(research_data, tmp_path)

    def run(store: Store):
        return backfill(store, RESEARCH, now=research_data.now, progress=False)

    report = benchmark.pedantic(run, setup=stores.setup, teardown=stores.teardown,
                                rounds=BACKFILL_ROUNDS, warmup_rounds=1)
    assert report.bars_read == research_data.height
    assert sum(report.rows_written.values()) == research_data.height
    bench_record("backfill_research", f"backfill research {research_data.height / 1e6:.1f}M bars",
                 bars=research_data.height)
    if benchmark.stats is not None:
        for line in _breakdown(research_data, tmp_path / "profiled", monkeypatch, benchmark.stats.stats.min):
            bench_note(line)


_PHASES = (  # (phase, what it covers); indented phases are part of the one above
    ("read bars", "Store.scan_bars (lists the store) + collect"),
    ("compute", "FeatureView.compute_symbol"),
    ("read stored features", "read_symbol_features (none: fresh store)"),
    ("diff against stored", "_rows_to_write"),
    ("write features", "write_symbol_features, in 2 writer threads: overlaps the phases above"),
    ("  split_by_year", "filter per year of the stamped rows"),
    ("  encode parquet", "_write_parquet: encode (uncompressed) to the temporary file (before the store's write lock)"),
    ("register view", "register_view"),
    ("refresh catalog", "refresh_catalog"),
)


def _breakdown(data, root: Path, monkeypatch: pytest.MonkeyPatch, best_s: float) -> list[str]:
    """One more backfill with timers around its phases (library code is wrapped, not changed), under cProfile."""
    clock = PhaseClock()
    scan_bars = Store.scan_bars

    def timed_scan(self, *args, **kwargs):
        with clock.phase("read bars"):
            return TimedLazy(scan_bars(self, *args, **kwargs), clock, "read bars")

    with monkeypatch.context() as patch:
        patch.setattr(Store, "scan_bars", timed_scan)
        patch.setattr(FeatureView, "compute_symbol", clock.wrap("compute", FeatureView.compute_symbol))
        for module, name, phase in (
            (featurestore.backfill, "read_symbol_features", "read stored features"),
            (featurestore.backfill, "_rows_to_write", "diff against stored"),
            (featurestore.backfill, "write_symbol_features", "write features"),
            (featurestore.backfill, "register_view", "register view"),
            (featurestore.backfill, "refresh_catalog", "refresh catalog"),
            (featurestore.offline, "split_by_year", "  split_by_year"),
            (featurestore.offline, "_write_parquet", "  encode parquet"),
        ):
            patch.setattr(module, name, clock.wrap(phase, getattr(module, name)))
        store = data.fresh_store(root)
        total, stats = run_profiled(lambda: backfill(store, RESEARCH, now=data.now, progress=False))
    # the stored rows are the view's values (checked on one symbol, outside the timing)
    symbol, frame = data.symbols[0], data.per_symbol[0]
    stored = read_symbol_features(store, RESEARCH, "synthetic", symbol)
    assert stored.drop("created_at", "view_version").equals(RESEARCH.compute_symbol(frame))
    shutil.rmtree(root, ignore_errors=True)

    lines = [f"backfill research, where the time goes (one extra round with timers and cProfile: {total:.2f} s; "
             f"the fastest timed round took {best_s:.2f} s; {data.height / total / 1e6:.2f}M bars/s here):"]
    lines += phase_table(clock, _PHASES, total=total, overlapping=["write features"],
                         other="the loop, ts filters, waiting for the writer, profiling", stats=stats)
    return lines


# -- baselines -------------------------------------------------------------------------------------------

def test_baseline_pandas_research(benchmark, bench_record, research_data, pandas_bars: pd.DataFrame,
                                  reference: pl.DataFrame):
    rows = benchmark.pedantic(pandas_research, args=(pandas_bars,), rounds=PANDAS_ROUNDS, warmup_rounds=1)
    assert_same_values(rows, reference)
    bench_record("pandas_research", "pandas groupby (in memory, no I/O)", bars=research_data.height)


def _select(over: bool) -> list[pl.Expr]:
    return [pl.col("symbol"), (pl.col("ts") + STEP).alias("ts"),
            *((expr.over("symbol") if over else expr).alias(name) for name, expr in RESEARCH.features.items())]


def test_baseline_polars_select_over(benchmark, bench_record, research_data, reference: pl.DataFrame):
    exprs = _select(over=True)
    rows = benchmark.pedantic(research_data.bars.select, args=exprs, rounds=SELECT_ROUNDS, warmup_rounds=1)
    assert rows.equals(reference)
    bench_record("polars_select_over", 'polars select .over("symbol") (in memory)', bars=research_data.height)


def test_baseline_polars_select_per_symbol(benchmark, bench_record, research_data, reference: pl.DataFrame):
    exprs = _select(over=False)

    def per_symbol() -> list[pl.DataFrame]:
        return [frame.select(exprs) for frame in research_data.per_symbol]

    rows = benchmark.pedantic(per_symbol, rounds=SELECT_ROUNDS, warmup_rounds=1)
    assert pl.concat(rows).equals(reference)
    bench_record("polars_select_per_symbol", "polars select per symbol (in memory)", bars=research_data.height)
