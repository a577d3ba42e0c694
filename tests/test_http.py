"""The HTTP service as a user runs it: ``featurestore serve`` in a subprocess, spoken to over a socket on 127.0.0.1.

Every endpoint, the 4xx answers, bearer auth on and off, the metrics text, and schema-based fuzzing of the
served OpenAPI document with schemathesis (bounded) finding no 5xx and no response off the schema.
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import schemathesis
from fixtures.toy_model import toy_store
from hypothesis import HealthCheck, settings
from prometheus_client.parser import text_string_to_metric_families
from schemathesis.checks import not_a_server_error
from test_signals import TABLE

from featurestore.online import OnlineRow
from featurestore.online.sqlite import SqliteOnlineStore
from featurestore.store import Store
from serving.openapi import openapi_schema
from serving.signals import verify_signal

SCRIPT = str(Path(sys.executable).parent / "featurestore")
SIGNING_KEY = "sign-" + secrets.token_hex(16)
TOKEN = "token-" + secrets.token_hex(16)


@dataclass
class Server:
    port: int
    store: Path
    process: subprocess.Popen
    token: str | None = None

    def request(self, method: str, path: str, body: bytes | str | None = None, headers: dict | None = None,
                token: str | None = "default") -> tuple[int, dict[str, str], bytes]:
        headers = dict(headers or {})
        token = self.token if token == "default" else token
        if token:
            headers["Authorization"] = f"Bearer {token}"
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            connection.close()

    def json(self, method: str, path: str, payload: object = None, **kwargs) -> tuple[int, dict]:
        body = None if payload is None else json.dumps(payload)
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        status, response_headers, data = self.request(method, path, body, headers, **kwargs)
        assert response_headers["content-type"].startswith("application/json"), (status, data)
        return status, json.loads(data)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def make_store(root: Path) -> Path:
    """The toy model in production and online rows written now: fresh, stale, skewed."""
    now = datetime.now(UTC)
    return toy_store(root, [OnlineRow("toy", "BTC/USDT", now, "v1", {"a": 0.5, "b": None}, now),
                            OnlineRow("toy", "ETH/USDT", now, "v1", {"a": -0.5, "b": 2.0}, now),
                            OnlineRow("toy", "OLD/USDT", now - timedelta(hours=2), "v1", {"a": 0.5, "b": 1.0}, now),
                            OnlineRow("toy", "NEW/USDT", now, "v2", {"a": 0.5, "b": 1.0}, now)])


def serve_env(token: str | None = None, key: str | None = SIGNING_KEY) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("FEATURESTORE_HOME", "FEATURESTORE_API_TOKEN", "FEATURESTORE_SIGNING_KEY")}
    env.update({"FEATURESTORE_SIGNING_KEY": key} if key else {}, **({"MY_TOKEN": token} if token else {}))
    return env


def start(store: Path, token: str | None, *args: str, key: str | None = SIGNING_KEY) -> Server:
    port = free_port()
    process = subprocess.Popen([SCRIPT, "serve", "--store", store, "--port", str(port), "--token-env", "MY_TOKEN", *args],
                               env=serve_env(token, key), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    server = Server(port, store, process, token)
    deadline = time.monotonic() + 60
    while True:
        try:
            if server.request("GET", "/openapi.json")[0] == 200:
                return server
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start: {process.communicate(timeout=5)}") from None
            time.sleep(0.1)


def stop(server: Server) -> str:
    server.process.terminate()
    out, err = server.process.communicate(timeout=30)
    assert server.process.returncode == 0, err
    return out + err


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    running = start(make_store(tmp_path_factory.mktemp("http")), token=None)
    yield running
    output = stop(running)
    assert "serving model toy t0 on http://127.0.0.1" in output and "auth: off" in output
    assert "Traceback" not in output and SIGNING_KEY not in output


@pytest.fixture(scope="module")
def secured(tmp_path_factory) -> Iterator[Server]:
    running = start(make_store(tmp_path_factory.mktemp("https")), token=TOKEN)
    yield running
    output = stop(running)
    assert "auth: bearer token from $MY_TOKEN" in output and TOKEN not in output and SIGNING_KEY not in output


def test_features_by_path_encoded_path_and_query(server):
    for path in ("/features/toy/BTC/USDT", "/features/toy/BTC%2FUSDT", "/features/toy?symbol=BTC/USDT",
                 "/features/toy?symbol=BTC%2FUSDT"):
        status, row = server.json("GET", path)
        assert status == 200, path
        assert (row["view"], row["symbol"], row["view_version"], row["features"]) == (
            "toy", "BTC/USDT", "v1", {"a": 0.5, "b": None})
        assert datetime.fromisoformat(row["ts"]).utcoffset() == timedelta(0)
    for path in ("/features/toy/XRP/USDT", "/features/nope/BTC/USDT", "/features/toy/", "/features/nope?symbol=X"):
        status, error = server.json("GET", path)
        assert (status, error["error"]) == (404, "not_found"), path
        assert "no online row for view" in error["message"]
    assert server.json("GET", "/features/toy") == (422, {
        "error": "invalid_query", "message": "give the symbol: /features/{view}?symbol=BTC/USDT"})


def test_score_one_and_many(server):
    status, body = server.json("POST", "/score", {"symbols": ["BTC/USDT"]})
    assert status == 200
    (signal,) = body["signals"]
    assert verify_signal(signal, key=SIGNING_KEY.encode())
    assert (signal["symbol"], signal["side"], signal["model"], signal["missing"]) == ("BTC/USDT", "LONG", "toy",
                                                                                      ["toy__b"])
    status, body = server.json("POST", "/score", {"symbols": ["ETH/USDT", "BTC/USDT"]})
    assert status == 200 and [s["symbol"] for s in body["signals"]] == ["ETH/USDT", "BTC/USDT"]
    assert [(s["side"], s["action"]) for s in body["signals"]] == [("SHORT", "SELL"), ("LONG", "BUY")]
    assert all(verify_signal(s, key=SIGNING_KEY.encode()) for s in body["signals"])
    assert body["signals"][1] == signal  # the same row again: the decision already logged
    logged = [json.loads(line) for line in (server.store / "signals" / "signals.jsonl").read_text().splitlines()]
    assert logged[-2:] == [signal, body["signals"][0]]


@pytest.mark.parametrize(("symbols", "status", "code", "message"), [
    (["XRP/USDT"], 404, "missing_features", "no online row of view 'toy' for XRP/USDT"),
    (["BTC/USDT", "OLD/USDT"], 409, "stale_features", "view 'toy' for OLD/USDT: the online row at"),
    (["NEW/USDT"], 409, "version_skew", "the online row is version v2, model toy t0 was trained on version v1"),
])
def test_score_refusals(server, symbols, status, code, message):
    got, error = server.json("POST", "/score", {"symbols": symbols})
    assert (got, error["error"]) == (status, code) and message in error["message"]


@pytest.mark.parametrize(("body", "content_type", "status", "code"), [
    ("{not json", "application/json", 400, "not_json"),
    ("[" * 100_000 + "]" * 100_000, "application/json", 400, "not_json"),
    ('{"symbols": ["BTC/USDT"]}', "text/plain", 415, "unsupported_media_type"),
    ('{"symbols": ["BTC/USDT"]}', None, 415, "unsupported_media_type"),
    ('["BTC/USDT"]', "application/json", 422, "invalid_body"),
    ('{"symbols": []}', "application/json", 422, "invalid_body"),
    ('{"symbols": "BTC/USDT"}', "application/json", 422, "invalid_body"),
    ('{"symbols": ["BTC/USDT"], "extra": 1}', "application/json", 422, "invalid_body"),
    ('{"symbols": [1]}', "application/json", 422, "invalid_body"),
    ('{"symbols": [""]}', "application/json", 422, "invalid_body"),
    ('{"symbols": ["' + "X" * 101 + '"]}', "application/json", 422, "invalid_body"),
    ('{"symbols": ["BTC/USDT", "BTC/USDT"]}', "application/json", 422, "invalid_body"),
    ('{"symbols": ["\\ud800"]}', "application/json", 422, "invalid_body"),  # a lone surrogate: not UTF-8
    (json.dumps({"symbols": [f"S{i}" for i in range(257)]}), "application/json", 422, "batch_too_large"),
    ('{"symbols": ["' + "X" * (1 << 20) + '"]}', "application/json", 413, "too_large"),
])
def test_malformed_score_requests(server, body, content_type, status, code):
    headers = {"Content-Type": content_type} if content_type else {}
    got, response_headers, data = server.request("POST", "/score", body, headers)
    assert (got, json.loads(data)["error"]) == (status, code)
    assert response_headers["content-type"] == "application/json"


def test_unknown_routes_and_methods_answer_json(server):
    assert server.json("GET", "/nope")[0] == 404
    assert server.json("GET", "/health/")[0] == 404
    status, headers, data = server.request("DELETE", "/score")
    assert status == 405 and headers["allow"] == "POST" and json.loads(data)["error"] == "method_not_allowed"
    assert server.json("GET", "/score")[0] == 405


def test_health(server):
    status, health = server.json("GET", "/health")
    assert status == 503 and health["status"] == "degraded"  # OLD/USDT is stale, NEW/USDT skewed
    assert health["model"] == {"name": "toy", "version": "t0", "kind": "regressor", "views": {"toy": "v1"},
                               "inputs": 2, "input_dtype": "float64",
                               "thresholds": {"long_above": 0.1, "short_below": -0.1}}
    rows = {row["symbol"]: row for row in health["views"]["toy"]}
    assert sorted(rows) == ["BTC/USDT", "ETH/USDT", "NEW/USDT", "OLD/USDT"]
    assert rows["BTC/USDT"]["fresh"] and rows["BTC/USDT"]["version_matches"]
    assert not rows["OLD/USDT"]["fresh"] and rows["OLD/USDT"]["age_seconds"] > 7200
    assert rows["NEW/USDT"]["fresh"] and not rows["NEW/USDT"]["version_matches"]
    assert rows["BTC/USDT"]["max_age_seconds"] == 3600


def test_metrics_parse_and_count(server):
    before = server.request("GET", "/metrics")[2].decode()
    server.json("GET", "/features/toy/BTC/USDT")
    server.json("POST", "/score", {"symbols": ["XRP/USDT"]})
    status, headers, data = server.request("GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")

    def samples(text: str) -> dict:
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    old, new = samples(before), samples(data.decode())
    feature_ok = ("featurestore_http_requests_total", (("method", "GET"),
                                                       ("route", "/features/{view}/{symbol:path}"), ("status", "200")))
    refused = ("featurestore_http_requests_total", (("method", "POST"), ("route", "/score"), ("status", "404")))
    assert new[feature_ok] == old.get(feature_ok, 0) + 1 and new[refused] == old.get(refused, 0) + 1
    assert new[("featurestore_scoring_refusals_total", (("reason", "missing_features"),))] >= 1
    buckets = [(dict(labels)["le"], value) for (name, labels), value in new.items()
               if name == "featurestore_http_request_duration_seconds_bucket" and ("route", "/score") in labels]
    assert ("+Inf", new[("featurestore_http_request_duration_seconds_count", (("route", "/score"),))]) in buckets
    assert [v for _, v in sorted(buckets, key=lambda b: float(b[0]))] == sorted(v for _, v in buckets)


def test_openapi_document(server):
    status, schema = server.json("GET", "/openapi.json")
    assert status == 200 and schema["openapi"] == "3.1.0" and "security" not in schema
    assert schema["paths"]["/score"]["post"]["requestBody"]["content"]["application/json"]["schema"][
        "properties"]["symbols"]["maxItems"] == 256


def test_a_healthy_service_answers_200(tmp_path):
    now = datetime.now(UTC)
    running = start(toy_store(tmp_path, [OnlineRow("toy", "BTC/USDT", now, "v1", {"a": 0.5, "b": None}, now)]), None)
    try:
        status, health = running.json("GET", "/health")
    finally:
        stop(running)
    assert (status, health["status"]) == (200, "ok")


def test_the_docs_page_renders_the_served_document_with_nothing_from_elsewhere(secured):
    status, headers, page = secured.request("GET", "/docs", token=None)  # public, as the document is
    assert status == 200 and headers["content-type"].startswith("text/html")
    html = page.decode()
    assert "<script" not in html and "http://" not in html and "https://" not in html and "<link" not in html
    for path in openapi_schema(max_batch=256, auth=True)["paths"]:
        assert f'<code class="path">{path}</code>' in html
    assert "Authorization: Bearer &lt;token&gt;" in html and TOKEN not in html


def test_features_only_needs_no_model_and_no_key(tmp_path):
    now = datetime.now(UTC)
    store = tmp_path / "store"
    with SqliteOnlineStore(Store(store).online_path) as online:
        online.put_many([OnlineRow("research", "BTC/USDT", now, "v1", {"ret_1": 0.5}, now)])
    running = start(store, None, "--features-only", key=None)
    try:
        status, row = running.json("GET", "/features/research/BTC/USDT")
        assert (status, row["features"]) == (200, {"ret_1": 0.5})
        assert running.json("POST", "/score", {"symbols": ["BTC/USDT"]})[0] == 404
        status, health = running.json("GET", "/health")
        assert (status, health["status"], health["model"]) == (200, "ok", None)
        assert "/score" not in running.json("GET", "/openapi.json")[1]["paths"]
    finally:
        output = stop(running)
    assert "serving features only (no model, no signing key) on http://127.0.0.1" in output
    assert not (store / "signals").exists()


def test_the_port_is_checked_and_bound_before_anything_is_announced(tmp_path):
    store = make_store(tmp_path)

    def serve(port: str) -> subprocess.CompletedProcess:
        return subprocess.run([SCRIPT, "serve", "--store", store, "--port", port], env=serve_env(), capture_output=True,
                              text=True, timeout=60, check=False)

    for bad in ("99999", "0", "-1", "http"):
        refused = serve(bad)
        assert refused.returncode == 2 and f"argument --port: {bad!r} is not a TCP port: give one in 1..65535" \
            in refused.stderr and refused.stdout == "", bad
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = serve(str(port))
    assert busy.returncode == 1 and busy.stdout == "" and "Traceback" not in busy.stderr
    assert busy.stderr == (f"error: cannot listen on 127.0.0.1:{port}: another process is listening there; stop it or "
                           f"choose another --port\n")


def test_bearer_auth(secured):
    for path in ("/health", "/metrics", "/features/toy/BTC/USDT", "/nope"):
        for token in (None, "wrong", TOKEN + "x", TOKEN[:-1]):
            status, headers, data = secured.request("GET", path, token=token)
            assert (status, headers.get("www-authenticate"), json.loads(data)["error"]) == (401, "Bearer",
                                                                                            "unauthorized"), (path, token)
    assert secured.request("POST", "/score", '{"symbols": ["BTC/USDT"]}', {"Content-Type": "application/json"},
                           token=None)[0] == 401
    assert secured.json("POST", "/score", {"symbols": ["BTC/USDT"]})[0] == 200
    assert secured.json("GET", "/health")[0] == 503  # answered (degraded: the fixture holds a stale row)
    status, schema = secured.json("GET", "/openapi.json", token=None)  # the contract is public, data is not
    assert status == 200 and schema["security"] == [{"bearer": []}]


def test_a_three_class_model_is_flat_on_neutral_through_every_transition(tmp_path):
    """A real 3-class LightGBM model served over HTTP: one new row per request walks the position table's
    9 cells (previous side x new side), a neutral prediction being FLAT."""
    store = toy_store(tmp_path, kind="classifier")
    sides = ["FLAT", "LONG", "LONG", "FLAT", "SHORT", "SHORT", "LONG", "SHORT", "FLAT"]  # from FLAT: all 9 cells
    a = {"SHORT": -2.0, "FLAT": 0.0, "LONG": 2.0}  # the model's classes: -1 below a = -1, 1 above 1, else 0
    base = datetime.now(UTC) - timedelta(minutes=1)
    server = start(store, token=None)
    signals = []
    try:
        for k, side in enumerate(sides):
            ts = base + timedelta(seconds=k)
            with SqliteOnlineStore(Store(store).online_path) as online:
                online.put_many([OnlineRow("toy", "BTC/USDT", ts, "v1", {"a": a[side], "b": 0.5}, ts)])
            status, body = server.json("POST", "/score", {"symbols": ["BTC/USDT"]})
            assert status == 200, body
            signals.extend(body["signals"])
    finally:
        stop(server)
    assert [s["side"] for s in signals] == sides
    assert [s["previous_side"] for s in signals] == ["FLAT", *sides[:-1]]
    assert {(s["previous_side"], s["side"]) for s in signals} == set(TABLE)
    for s in signals:
        assert (s["action"], s["quantity"], s["position_after"]) == TABLE[(s["previous_side"], s["side"])]
    assert all(s["score"] == 0.0 for s in signals if s["side"] == "FLAT")  # neutral: no side, whatever P(up) - P(down)
    assert all(verify_signal(s, key=SIGNING_KEY.encode()) for s in signals)


# --- schema-based fuzzing ---------------------------------------------------------------------------

# The document the server serves (checked equal below); loaded at import for schemathesis' parametrize.
SCHEMA = openapi_schema(max_batch=256, auth=True)
fuzzed = schemathesis.openapi.from_dict(SCHEMA)


def test_the_fuzzed_document_is_the_served_one(secured):
    assert secured.json("GET", "/openapi.json", token=None) == (200, SCHEMA)


@fuzzed.parametrize()
@settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck))
def test_fuzzing_finds_no_server_error(case, secured):
    # The fixture's store is degraded on purpose (a stale row, a skewed one): /health answers its documented 503.
    degraded = case.path == "/health"
    response = case.call_and_validate(base_url=f"http://127.0.0.1:{secured.port}",
                                      headers={"Authorization": f"Bearer {TOKEN}"},
                                      excluded_checks=[not_a_server_error] if degraded else None)
    assert response.status_code < 500 or (degraded and response.status_code == 503), response.status_code

