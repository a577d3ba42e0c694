"""The dashboard in a real browser: ``featurestore serve`` in a subprocess, every ``/ui`` page loaded by a headless
Chromium (Debian's ``chromium`` and ``chromium-driver``, through selenium) with no console error and the figures
of a known store on it; a screenshot of each page under the test's tmp dir. And the monitoring gauges of
``/metrics``."""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import time
from datetime import timedelta
from pathlib import Path

import pytest
from fixtures.monitored import END, MODEL, SYMBOLS, VIEW
from prometheus_client.parser import text_string_to_metric_families
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
# The machine's network is closed: no background connection, no first-run, a fresh profile.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-dev-shm-usage",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1280,2400"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def get(port: int, path: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@pytest.fixture(scope="module")
def served(monitored, featurestore_script):
    """The monitored store with its latest monitor and consistency reports, served on a free port."""
    report = monitored.monitor(MODEL, end=END, window=timedelta(days=7))
    consistency = monitored.consistency(VIEW)
    port = free_port()
    process = subprocess.Popen([featurestore_script, "serve", "--store", str(monitored.root), "--port", str(port)],
                               env={k: v for k, v in os.environ.items() if k != "FEATURESTORE_API_TOKEN"},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while True:
        try:
            if get(port, "/health")[0] in (200, 503):
                break
        except OSError:
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.1)
    yield port, report, consistency
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.fail("install Debian's chromium and chromium-driver (make test does: tools/system-packages.sh)")
    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in [*FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    yield driver
    driver.quit()


def test_every_page_loads_without_console_errors_and_shows_the_store(served, browser, monitored, tmp_path):
    port, report, consistency = served
    rv = next(f.drift for f in report.features if f.feature == f"{VIEW}__rv_24")
    newest = monitored.store.replay_audit_path.read_text().splitlines()[-1]  # the fixture streamed a replay
    version = monitored.model_dir(MODEL).name
    pages = {
        "overview": ("/ui", [VIEW, monitored.view(VIEW).version, f"{monitored.views()[-1].rows:,}", MODEL, version,
                             "ALERT"]),
        "model": (f"/ui/models/{MODEL}", [f"version {version}", "Walk-forward metrics", "ic_spearman",
                                          f"{rv.psi:.6g}", f"{rv.ks:.6g}", f"{report.live.rows:,}",
                                          f"{report.backtest.hit_rate:.6g}", "Live performance beside the backtest"]),
        "signals": ("/ui/signals", [newest.split('"symbol":"')[1].split('"')[0], "2024-03-01T00:00:00+00:00"]),
        "consistency": ("/ui/consistency", [consistency.summary(), "consistent"]),
    }
    for name, (path, expected) in pages.items():
        browser.get(f"http://127.0.0.1:{port}{path}")
        text = browser.find_element(By.TAG_NAME, "body").text
        for figure in expected:
            assert figure in text, (name, figure)
        assert browser.execute_script("return [...document.images].every(i => i.complete && i.naturalWidth > 0)")
        errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
        assert errors == [], (name, errors)
        assert browser.save_screenshot(str(tmp_path / f"{name}.png"))
    images = browser.execute_script("return [...document.images].map(i => i.alt)")
    assert images == [] and (tmp_path / "model.png").stat().st_size > 10_000  # the signals page has none
    browser.get(f"http://127.0.0.1:{port}/ui/models/{MODEL}")
    assert browser.execute_script("return [...document.images].map(i => i.alt)") == ["equity.png", "importance.png"]


def test_metrics_expose_drift_freshness_consistency_and_signal_counts(served):
    port, report, consistency = served
    status, body = get(port, "/metrics")
    assert status == 200
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(body.decode()) for s in family.samples}
    model = (("model", MODEL),)
    assert samples["featurestore_monitor_status", model] == 2.0  # ALERT
    rv = next(f.drift for f in report.features if f.feature == f"{VIEW}__rv_24")
    assert samples["featurestore_feature_psi", (("feature", f"{VIEW}__rv_24"), *model)] == rv.psi
    assert samples["featurestore_prediction_ks", model] == report.prediction.ks
    assert sum(samples["featurestore_monitor_signals", (*model, ("side", side))] for side in report.signals) == \
        report.rows
    assert samples["featurestore_live_ic", (*model, ("of", "live"))] == report.live.ic
    assert samples["featurestore_consistency_match_share", (("feature", "rv_24"), ("view", VIEW))] == 1.0
    assert samples["featurestore_consistency_rows", (("kind", "compared"), ("view", VIEW))] == consistency.compared
    ages = [samples["featurestore_freshness_age_seconds", (("symbol", s), ("view", VIEW))] for s in SYMBOLS]
    assert all(age > 0 for age in ages)  # the newest rows are from 2024, served now
