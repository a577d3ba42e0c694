"""``featurestore monitor`` and ``featurestore consistency`` as a user runs them, on a synthetic market whose regime
switches after the model was trained: the drift it caused raised, the rows the flow served checked bit for bit."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

from fixtures.monitored import END, NOW, START, SWITCH, SYMBOLS

from featurestore import FeatureStore
from featurestore.ingest import ingest_bars
from featurestore.sources.synthetic import synthetic_bars
from serving.monitoring import MonitorReport
from streaming.consistency import ConsistencyReport
from training.artifact import ModelMeta


def test_monitor_raises_the_drift_the_regime_switch_caused_and_exits_3(monitored, run_cli, tmp_path):
    out = tmp_path / "report.json"
    done = run_cli("monitor", "--store", monitored.root, "--model", "hourly", "--end", END.isoformat(),
                   "--window", "7d", "--json", out)
    assert done.returncode == 3, done.stderr
    report = MonitorReport.from_json(out.read_text())
    assert report == MonitorReport.from_json(monitored.store.monitor_report_path("hourly").read_text())
    assert (report.status, report.source, report.rows) == ("ALERT", "signals", 2 * 7 * 24)
    assert report.window_start == END - timedelta(days=7) and sum(report.signals.values()) == report.rows
    status = {(c.check, c.subject, c.figure): c.status for c in report.checks}
    assert status["feature_drift", "research_1h__rv_24", "psi"] == "ALERT"
    assert status["feature_drift", "research_1h__rv_24", "ks"] == "ALERT"
    assert status["feature_drift", "research_1h__rv_24", "null_rate"] == "OK"
    assert {status["freshness", f"research_1h {s}", "age_bars"] for s in SYMBOLS} == {"OK"}
    assert report.live.rows == report.rows - 2  # the last row of each symbol: its label needs a bar not stored
    model = monitored.model_dir("hourly")
    assert report.backtest == ModelMeta.read(model).read_reference(model).backtest and report.backtest.rows > 0
    assert {status["live_performance", figure, f"{figure}_drop"] for figure in ("ic", "hit_rate")} <= {
        "OK", "WARN", "ALERT"}
    assert "ALERT   feature_drift     research_1h__rv_24" in done.stdout


def test_a_window_before_the_switch_is_scored_from_the_offline_store(monitored, run_cli):
    done = run_cli("monitor", "--store", monitored.root, "--end", (SWITCH - timedelta(days=1)).isoformat(),
                   "--window", "5d")
    report = MonitorReport.from_json(monitored.store.monitor_report_path("hourly").read_text())
    assert done.returncode == (3 if report.status == "ALERT" else 0), done.stderr
    assert (report.source, report.rows, report.live) == ("offline", 2 * 5 * 24, None)
    after = monitored.monitor("hourly", end=END, window=timedelta(days=5))
    volatility = {r.source: {f.feature: f.drift for f in r.features}["research_1h__rv_72"] for r in (report, after)}
    # volatility clusters (five calm days drift too), but only the switch moves all of it past the training range
    before, switched = volatility["offline"], volatility["signals"]
    assert switched.ks > 0.99 > 1.5 * before.ks and switched.mean > 4 * before.reference_mean > 4 * before.mean / 2
    assert {c.status for c in report.checks if c.check == "live_performance"} == {"SKIP"}


def test_thresholds_come_from_the_store_config_and_a_typo_is_named(monitored, run_cli, tmp_path):
    store = Path(shutil.copytree(monitored.root, tmp_path / "store"))
    config = store / "featurestore.toml"
    text = config.read_text()
    config.write_text(text + "\n[monitor]\npsi_alert = 1000.0\npsi_warn = 1000.0\nks_alert = 1.0\nks_warn = 1.0\n")
    done = run_cli("monitor", "--store", store, "--end", END.isoformat(), "--window", "7d")
    report = MonitorReport.from_json((store / "monitor" / "model-hourly.json").read_text())
    assert report.thresholds.psi_alert == 1000.0
    assert {c.status for c in report.checks if c.check.endswith("drift") and c.figure != "null_rate"} == {"OK"}
    assert done.returncode == (3 if report.status == "ALERT" else 0)
    config.write_text(text + "\n[monitor]\nks_alrt = 0.3\n")
    done = run_cli("monitor", "--store", store, "--end", END.isoformat())
    assert done.returncode == 1 and "[monitor]: unknown threshold 'ks_alrt'; did you mean 'ks_alert'?" in done.stderr


def test_a_model_published_before_reference_distributions_is_monitored_without_drift(monitored, tmp_path):
    model = Path(shutil.copytree(monitored.model_dir("hourly"), tmp_path / "old_model"))
    meta = json.loads((model / "meta.json").read_text())
    del meta["reference"]
    (model / "meta.json").write_text(json.dumps({**meta, "format": 2}))
    (model / "reference.json").unlink()
    assert ModelMeta.read(model).reference is None
    report = monitored.monitor(str(model), end=END, window=timedelta(days=7))
    (drift,) = [c for c in report.checks if c.check == "feature_drift"]
    assert drift.status == "SKIP" and "retrain" in drift.detail and report.live.rows > 0


def test_consistency_finds_the_late_bar_the_flow_never_saw(tmp_path, run_cli):
    fs = FeatureStore.init(tmp_path / "store", timeframe="1h", clock=lambda: NOW)
    late = datetime(2024, 1, 9, 5, tzinfo=UTC)
    bars = synthetic_bars(SYMBOLS, "1h", since=START, until=datetime(2024, 1, 11, tzinfo=UTC))
    ingest_bars(fs.store, bars.filter(bars["ts"] != late), exchange="synthetic", timeframe="1h", source="test")
    fs.apply(builtin="research")
    fs.stream("research_1h", start=datetime(2024, 1, 8, tzinfo=UTC), batch=1)
    done = run_cli("consistency", "--store", fs.root, "--view", "research_1h")
    assert done.returncode == 0 and "CONSISTENT" in done.stdout, done.stdout + done.stderr
    ingest_bars(fs.store, bars.filter(bars["ts"] == late), exchange="synthetic", timeframe="1h", source="late")
    out = tmp_path / "consistency.json"
    done = run_cli("consistency", "--store", fs.root, "--view", "research_1h", "--json", out)
    assert done.returncode == 1 and "INCONSISTENT" in done.stdout
    report = ConsistencyReport.from_json(out.read_text())
    assert (report.served, report.only_served, report.only_offline) == (2 * 71, 0, 2)  # the late bar's row
    assert [(k.symbol, k.ts) for k in report.first_only_offline] == [(s, late + timedelta(hours=1)) for s in SYMBOLS]
    ret_1 = next(f for f in report.features if f.feature == "ret_1")
    assert ret_1.compared == 2 * 71 and ret_1.matching == 2 * 71 - 2  # the next row's return spans the late bar
    first = report.mismatches[0]
    assert first.ts == late + timedelta(hours=2) and first.served != first.offline
    assert report == ConsistencyReport.from_json(fs.store.consistency_report_path("research_1h").read_text())
