"""``FeatureStore.monitor`` over one day of 1m rows for 50 symbols and a 14-feature model (``research``).

Data (not scaled): 50 symbols x 3 days of one-minute bars, ``research`` backfilled, a regressor trained on the
first two days (100 trees), and the audit log holding a signal for every row of the third day (72,000 rows:
the offline rows, scored by the model's ONNX graph in one batch, written as the signal service writes them;
signatures are not what is measured, and monitor does not check them).

- ``monitor_signals``: ``fs.monitor(model, end, window=1d)`` from the audit log: read the window's signals,
  PSI/KS/null rate of 14 inputs and the scores against the reference, freshness of 50 online rows, live IC,
  hit rate and side returns of the matured signals from the stored bars, the report written.
- ``monitor_offline``: the same with ``source="offline"``: the window's point-in-time rows exported from the
  offline store and scored by LightGBM instead of read from the audit log.
- ``monitor_bare``: the baseline, the figures done by hand with the usual tools: every audit-log line parsed
  with orjson, the inputs and scores laid out in numpy, and ``scipy.stats.ks_2samp`` of each of the 15
  columns against the training rows (two-sample KS over the full samples; PSI not included).

Target: a day of 72,000 served rows monitored in under 5 s (so a scheduler can run it every minute).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

import numpy as np
import orjson
import polars as pl
import pytest
from scipy.stats import ks_2samp

from featurestore import FeatureStore
from featurestore.online import OnlineRow, connect
from training.artifact import ModelMeta
from training.model import ModelParams
from training.onnx_export import run_onnx

SYMBOLS = [f"M{i:02d}/USDT" for i in range(50)]
START = datetime(2024, 3, 1, tzinfo=UTC)
DAY = timedelta(days=1)
END = START + 3 * DAY
ROUNDS = 5


@pytest.fixture(scope="module")
def monitored(tmp_path_factory) -> tuple[FeatureStore, np.ndarray]:
    """The store, and the training rows' inputs and scores (for the baseline)."""
    os.environ.setdefault("FEATURESTORE_SIGNING_KEY", "bench")
    fs = FeatureStore.init(tmp_path_factory.mktemp("monitor") / "store", clock=lambda: END)
    fs.ingest(symbols=SYMBOLS, since=START, until=END)
    fs.backfill("research")
    fs.train(features=["research"], label="future_ret:h=1", name="bench", end=START + 2 * DAY, promote=True,
             params=ModelParams(num_boost_round=100, num_threads=2), folds=2)
    model = fs.model_dir("bench")
    meta = ModelMeta.read(model)
    rows = fs.get_historical_features(features=["research"], all_bars=True, start=START, end=END + timedelta(minutes=1))
    X = rows.select(meta.feature_names).fill_null(np.nan).to_numpy()
    scores = run_onnx((model / "model.onnx").read_bytes(), X, "float64").reshape(-1)
    served = rows.with_columns(pl.Series("score", scores)).filter(pl.col("event_ts") > START + 2 * DAY)
    fs.store.audit_path.parent.mkdir(parents=True, exist_ok=True)
    with open(fs.store.audit_path, "wb") as log:
        for row in served.iter_rows(named=True):
            side = "LONG" if row["score"] > 0 else "SHORT"
            log.write(orjson.dumps({
                "ts": row["event_ts"].isoformat(), "symbol": row["symbol"], "side": side, "score": row["score"],
                "model": meta.name, "model_version": meta.version, "previous_side": side, "action": "HOLD",
                "features": {name: row[name] for name in meta.feature_names}, "signature": "-"},
                option=orjson.OPT_SORT_KEYS | orjson.OPT_APPEND_NEWLINE))
    newest = served.group_by("symbol").agg(pl.all().sort_by("event_ts").last())
    with connect(fs.store.online_url) as online:
        online.put_many(OnlineRow("research", r["symbol"], r["event_ts"], fs.view("research").version,
                                  {n.split("__", 1)[1]: r[n] for n in meta.feature_names}, END)
                        for r in newest.iter_rows(named=True))
    assert served.height == len(SYMBOLS) * 1440
    training = rows.filter(pl.col("event_ts") <= START + 2 * DAY)
    return fs, np.column_stack([training.select(meta.feature_names).fill_null(np.nan).to_numpy(),
                                scores[:training.height]])


@pytest.mark.parametrize("source", ["signals", "offline"])
def test_monitor_one_day_of_50_symbols(benchmark, bench_record, bench_note, monitored, source):
    fs, _ = monitored
    report = benchmark.pedantic(lambda: fs.monitor("bench", end=END, window=DAY, source=source), rounds=ROUNDS)
    assert report.rows == len(SYMBOLS) * 1440 and report.source == source
    assert len(report.features) == 14 and report.prediction is not None
    if source == "signals":
        assert report.live is not None and report.live.rows == report.rows - len(SYMBOLS)
    bench_record(f"monitor_{source}", f"monitor, 1 day x {len(SYMBOLS)} symbols, 14 inputs ({source})",
                 bars=report.rows)
    if benchmark.stats is not None:
        bench_note(f"monitor from {source}: {report.rows:,} rows, fastest round {benchmark.stats.stats.min:.2f} s, "
                   f"median {benchmark.stats.stats.median:.2f} s; status {report.status}")


def test_monitor_bare_baseline(benchmark, bench_record, monitored):
    fs, training = monitored

    def bare() -> list[float]:
        names = None
        values = []
        with open(fs.store.audit_path, "rb") as log:
            for line in log:
                signal = orjson.loads(line)
                names = names or sorted(signal["features"])
                values.append([signal["features"][n] for n in names] + [signal["score"]])
        live = np.array(values, dtype=np.float64)
        return [ks_2samp(training[:, j][~np.isnan(training[:, j])], live[:, j]).statistic
                for j in range(live.shape[1])]

    statistics = benchmark.pedantic(bare, rounds=ROUNDS)
    assert len(statistics) == 15
    bench_record("monitor_bare", "orjson parse + scipy ks_2samp x 15 columns", bars=len(SYMBOLS) * 1440)
