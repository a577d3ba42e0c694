"""Signals: sides, the position-transition table, HMAC signing, the audit log, and the score / verify-signal CLI."""

from __future__ import annotations

import json
import math
import os
import secrets
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fixtures.toy_model import write_toy_model

from featurestore.errors import FeatureStoreError
from featurestore.online import OnlineRow
from featurestore.online.sqlite import SqliteOnlineStore
from featurestore.store import Store
from serving.audit import AuditLog, last_signals
from serving.scorer import Scorer, load_model
from serving.signal_service import SignalService
from serving.signals import (
    Thresholds,
    canonical_bytes,
    json_number,
    side_for,
    sign_signal,
    signing_key,
    transition,
    verify_file,
    verify_signal,
)

SCRIPT = str(Path(sys.executable).parent / "featurestore")
T = datetime(2024, 5, 1, 12, tzinfo=UTC)
KEY = b"test key"

# (current, target) -> (action, quantity in units of size, position after in units of size)
TABLE = {
    ("FLAT", "FLAT"): ("HOLD", 0, 0), ("FLAT", "LONG"): ("BUY", 1, 1), ("FLAT", "SHORT"): ("SELL", 1, -1),
    ("LONG", "FLAT"): ("SELL", 1, 0), ("LONG", "LONG"): ("HOLD", 0, 1), ("LONG", "SHORT"): ("SELL", 2, -1),
    ("SHORT", "FLAT"): ("BUY", 1, 0), ("SHORT", "LONG"): ("BUY", 2, 1), ("SHORT", "SHORT"): ("HOLD", 0, -1),
}


@pytest.mark.parametrize("size", [1.0, 2.5, 1e-8])
@pytest.mark.parametrize(("current", "target"), sorted(TABLE))
def test_transition_table(current, target, size):
    action, quantity, after = TABLE[(current, target)]
    move = transition(current, target, size=size)
    assert (move.action, move.quantity, move.position_after) == (action, quantity * size, after * size)


@pytest.mark.parametrize("size", [0.0, -1.0, math.nan, math.inf])
def test_transition_refuses_a_size_that_is_not_a_positive_number(size):
    with pytest.raises(FeatureStoreError, match="position size must be a positive number"):
        transition("FLAT", "LONG", size=size)


def test_sides_at_the_thresholds():
    thresholds = Thresholds(long_above=0.1, short_below=-0.2)
    assert [side_for(x, thresholds) for x in (0.1000001, 0.1, 0.0, -0.2, -0.2000001, math.nan, math.inf, -math.inf)] \
        == ["LONG", "FLAT", "FLAT", "FLAT", "SHORT", "FLAT", "LONG", "SHORT"]
    with pytest.raises(FeatureStoreError, match="thresholds overlap"):
        Thresholds(long_above=-0.1, short_below=0.1)


def test_json_number():
    assert [json_number(v) for v in (1.5, -0.0, None, math.nan, math.inf, -math.inf)] == [1.5, -0.0, None, None, "inf",
                                                                                         "-inf"]


@pytest.fixture
def service_parts(tmp_path):
    """(model dir, online store path, audit path): the toy model (threshold 0.1) and an empty online store."""
    write_toy_model(tmp_path / "model", threshold=0.1)
    with SqliteOnlineStore(Store(tmp_path).online_path):
        pass
    return tmp_path / "model", Store(tmp_path).online_path, tmp_path / "signals.jsonl"


def service(parts, **kwargs) -> SignalService:
    model, online, audit = parts
    return SignalService(Scorer(load_model(model), SqliteOnlineStore(online, readonly=True)), key=KEY,
                         audit=AuditLog(audit), **kwargs)


def put(parts, ts: datetime, **a_by_symbol: float) -> None:
    with SqliteOnlineStore(parts[1]) as online:
        online.put_many([OnlineRow("toy", symbol.replace("_", "/"), ts, "v1", {"a": a, "b": 1.0}, ts)
                      for symbol, a in a_by_symbol.items()])


def test_signals_follow_positions_across_calls_and_restarts(service_parts):
    put(service_parts, T, BTC_USDT=0.5, ETH_USDT=-0.5)
    with service(service_parts) as first:
        assert first.thresholds == Thresholds(0.1, -0.1)  # the model's recorded threshold
        opened = first.signals(["BTC/USDT", "ETH/USDT"], now=T)
        put(service_parts, T + timedelta(minutes=1), BTC_USDT=-0.5)
        reversed_ = first.signals(["BTC/USDT"], now=T + timedelta(minutes=1))
    assert [(s["side"], s["previous_side"], s["action"], s["quantity"], s["position_after"]) for s in opened] == [
        ("LONG", "FLAT", "BUY", 1.0, 1.0), ("SHORT", "FLAT", "SELL", 1.0, -1.0)]
    assert [(s["side"], s["action"], s["quantity"], s["position_after"]) for s in reversed_] == [
        ("SHORT", "SELL", 2.0, -1.0)]
    signal = opened[0]
    assert signal["ts"] == "2024-05-01T12:00:00+00:00" and signal["symbol"] == "BTC/USDT"
    assert (signal["model"], signal["model_version"], signal["views"]) == (
        "toy", "t0", {"toy": {"version": "v1", "ts": "2024-05-01T12:00:00+00:00"}})
    assert signal["features"] == {"toy__a": 0.5, "toy__b": 1.0} and signal["missing"] == []
    assert signal["score"] > 0.1 and signal["thresholds"] == {"long_above": 0.1, "short_below": -0.1}
    logged = [json.loads(line) for line in service_parts[2].read_text().splitlines()]
    assert logged == [*opened, *reversed_]
    assert {symbol: signal["side"] for symbol, signal in last_signals(service_parts[2], model="toy", key=KEY).items()} \
        == {"BTC/USDT": "SHORT", "ETH/USDT": "SHORT"}

    with service(service_parts, thresholds=Thresholds(1.0, -1.0), size=3.0) as restarted:  # every score is FLAT now
        closed = restarted.signals(["BTC/USDT", "ETH/USDT"], now=T + timedelta(minutes=1))
    assert [(s["previous_side"], s["side"], s["action"], s["quantity"], s["position_after"]) for s in closed] == [
        ("SHORT", "FLAT", "BUY", 3.0, 0.0), ("SHORT", "FLAT", "BUY", 3.0, 0.0)]
    assert verify_file(service_parts[2], key=KEY) == []


def test_one_signal_per_decision(service_parts):
    put(service_parts, T, BTC_USDT=0.5, ETH_USDT=-0.5)
    with service(service_parts) as svc:
        first = svc.signals(["BTC/USDT"], now=T)
        again = svc.signals(["BTC/USDT", "ETH/USDT"], now=T + timedelta(seconds=30))
    assert again[0] == first[0] and again[1]["symbol"] == "ETH/USDT"  # a retry gets the logged signal, no HOLD
    with service(service_parts) as restarted:
        assert restarted.signals(["ETH/USDT", "BTC/USDT"], now=T) == [again[1], first[0]]
        put(service_parts, T + timedelta(minutes=1), BTC_USDT=0.7)  # a new row: a new decision
        (later,) = restarted.signals(["BTC/USDT"], now=T + timedelta(minutes=1))
    with service(service_parts, size=2.0) as resized:  # other settings: a new decision about the same row
        (bigger,) = resized.signals(["BTC/USDT"], now=T + timedelta(minutes=1))
    assert (later["ts"], later["action"], later["previous_side"]) == ("2024-05-01T12:01:00+00:00", "HOLD", "LONG")
    assert (bigger["size"], bigger["action"], bigger["position_after"]) == (2.0, "HOLD", 2.0)
    logged = [json.loads(line) for line in service_parts[2].read_text().splitlines()]
    assert logged == [first[0], again[1], later, bigger]


def test_a_classifiers_thresholds_must_bracket_zero(tmp_path):
    write_toy_model(tmp_path / "cls", kind="classifier")
    with SqliteOnlineStore(Store(tmp_path).online_path):
        pass
    parts = (tmp_path / "cls", Store(tmp_path).online_path, tmp_path / "signals.jsonl")
    with pytest.raises(FeatureStoreError, match=r"a classifier's thresholds must bracket 0 .* got long above -0.1, "
                                                r"short below -0.2"):
        service(parts, thresholds=Thresholds(-0.1, -0.2))
    with service(parts, thresholds=Thresholds(0.0, -0.3)) as accepted:
        assert accepted.thresholds == Thresholds(0.0, -0.3)


def test_a_refused_batch_writes_nothing(service_parts):
    put(service_parts, T, BTC_USDT=0.5)
    with service(service_parts) as svc, pytest.raises(FeatureStoreError, match="XRP/USDT"):
        svc.signals(["BTC/USDT", "XRP/USDT"], now=T)
    assert service_parts[2].read_text() == ""


def tampered(signal: dict, field: str) -> dict:
    value = signal[field]
    changed = (value + "x" if isinstance(value, str) else not value if isinstance(value, bool)
               else value + 1 if isinstance(value, (int, float)) else [*value, "x"] if isinstance(value, list)
               else {**value, "x": 1})
    return {**signal, field: changed}


def test_every_field_is_signed(service_parts):
    put(service_parts, T, BTC_USDT=0.5)
    with service(service_parts) as svc:
        (signal,) = svc.signals(["BTC/USDT"], now=T)
    assert verify_signal(signal, key=KEY)
    assert verify_signal(dict(reversed(list(signal.items()))), key=KEY)  # key order does not matter
    for field in signal:
        if field != "signature":
            assert not verify_signal(tampered(signal, field), key=KEY), field
    nested = json.loads(json.dumps(signal))
    nested["features"]["toy__a"] = 0.50000001
    assert not verify_signal(nested, key=KEY)
    assert not verify_signal({k: v for k, v in signal.items() if k != "symbol"}, key=KEY)
    assert not verify_signal({**signal, "extra": 1}, key=KEY)
    flipped = ("0" if signal["signature"][0] != "0" else "1") + signal["signature"][1:]
    for bad in (flipped, signal["signature"].upper(), "", None, 7):
        assert not verify_signal({**signal, "signature": bad}, key=KEY)
    assert not verify_signal({k: v for k, v in signal.items() if k != "signature"}, key=KEY)
    assert not verify_signal(signal, key=b"another key")
    assert not verify_signal({**signal, "score": math.nan}, key=KEY)


def test_canonical_form_and_the_key_variable():
    assert canonical_bytes({"b": 1, "a": [1.5, None], "signature": "x"}) == b'{"a":[1.5,null],"b":1}'
    with pytest.raises(ValueError):
        canonical_bytes({"score": math.inf})
    assert signing_key({"FEATURESTORE_SIGNING_KEY": "abc"}) == b"abc"
    with pytest.raises(FeatureStoreError, match="set FEATURESTORE_SIGNING_KEY"):
        signing_key({})


def test_last_signals_trusts_only_verified_lines_of_the_model(tmp_path):
    path = Store(tmp_path).audit_path
    with AuditLog(path, fsync=False) as log:
        log.append([sign_signal({"model": "m", "symbol": "A", "side": "LONG"}, key=KEY),
                    sign_signal({"model": "other", "symbol": "B", "side": "SHORT"}, key=KEY),
                    sign_signal({"model": "m", "symbol": "B", "side": "SHORT"}, key=b"forged")])
    with open(path, "a") as handle:
        handle.write("not json\n")
    assert {s: signal["side"] for s, signal in last_signals(path, model="m", key=KEY).items()} == {"A": "LONG"}
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert last_signals(tmp_path / "absent.jsonl", model="m", key=KEY) == {}


# --- the CLI, as a user runs it ----------------------------------------------------------------------


def featurestore(*args: object, cwd: Path, key: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("FEATURESTORE_HOME", "FEATURESTORE_SIGNING_KEY")}
    if key is not None:
        env["FEATURESTORE_SIGNING_KEY"] = key
    return subprocess.run([SCRIPT, *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env, timeout=120,
                          check=False)


def test_score_and_verify_signal_commands(tmp_path):
    store, work = tmp_path / "store", tmp_path / "work"
    work.mkdir()
    write_toy_model(store / "models" / "toy" / "t0", threshold=0.1)
    (store / "models" / "toy" / "production").write_text('{"name": "toy", "version": "t0"}')
    now = datetime.now(UTC)  # the CLI scores at the wall clock: rows of now are fresh (TTL 1h)
    with SqliteOnlineStore(Store(store).online_path) as online:
        online.put_many([OnlineRow("toy", "BTC/USDT", now, "v1", {"a": 0.5, "b": None}, now),
                      OnlineRow("toy", "ETH/USDT", now - timedelta(hours=2), "v1", {"a": -0.5, "b": 1.0}, now)])
    key = "k3y-" + secrets.token_hex(16)
    runs = []

    def run(*args: object, key: str | None = key) -> subprocess.CompletedProcess:
        runs.append(featurestore(*args, "--store", store, cwd=work, key=key))
        return runs[-1]

    done = run("score", "--model", "toy", "--symbols", "BTC/USDT")
    assert done.returncode == 0, done.stderr
    (line,) = done.stdout.splitlines()
    signal = json.loads(line)
    assert verify_signal(signal, key=key.encode()) and signal["side"] == "LONG" and signal["missing"] == ["toy__b"]
    log = Store(store).audit_path
    assert log.read_text() == line + "\n"
    again = run("score", "--model", str(store / "models" / "toy" / "t0"), "--symbols", "BTC/USDT")
    assert again.stdout == done.stdout and log.read_text() == line + "\n"  # the same row: the logged decision

    stale = run("score", "--model", "toy", "--symbols", "BTC/USDT,ETH/USDT")
    assert stale.returncode == 1 and stale.stdout == ""
    assert "error: refusing to score: view 'toy' for ETH/USDT: the online row at" in stale.stderr
    assert "older than the max age 1:00:00" in stale.stderr
    relaxed = run("score", "--model", "toy", "--symbols", "BTC/USDT,ETH/USDT", "--max-age", "3h", "--size", "2")
    assert relaxed.returncode == 0 and [json.loads(x)["quantity"] for x in relaxed.stdout.splitlines()] == [0.0, 2.0]
    unsigned = run("score", "--model", "toy", "--symbols", "BTC/USDT", key=None)
    assert unsigned.returncode == 1 and "set FEATURESTORE_SIGNING_KEY" in unsigned.stderr

    verified = run("verify-signal", log)
    assert verified.returncode == 0 and "every signal" in verified.stdout
    lines = log.read_text().splitlines()
    assert len(lines) == 3
    edited = json.loads(lines[2])
    edited["score"] = -edited["score"]
    log.write_text("\n".join([lines[0], lines[1], "{oops", json.dumps(edited)]) + "\n")
    refused = run("verify-signal", log)
    assert refused.returncode == 1
    assert refused.stderr.splitlines() == [f"error: {log} line 3: not JSON (Expecting property name enclosed in "
                                           f"double quotes)",
                                           f"error: {log} line 4: signature does not match (symbol ETH/USDT)"]
    assert run("verify-signal", log, key="another key").returncode == 1
    assert run("verify-signal", log, key=None).returncode == 1
    assert run("verify-signal", tmp_path / "absent.jsonl").returncode == 1

    outputs = "".join(r.stdout + r.stderr for r in runs)
    assert key not in outputs
    files = [p for root in (store, work) for p in root.rglob("*") if p.is_file()]
    assert files and not [p for p in files if key.encode() in p.read_bytes()]


def test_demo_stage_materializes_what_the_online_store_lacks_and_is_idempotent(tmp_path, capsys, monkeypatch):
    import numpy as np

    from app.demo.serving_stage import DEMO_SIGNING_KEY, run_serving_stage
    from app.demo.training_stage import DEMO_MODEL
    from featurestore.backfill import backfill
    from featurestore.builtin_views import DAILY_TREND, RESEARCH
    from featurestore.ingest import ingest_resampled, ingest_synthetic
    from featurestore.store import Store
    from training.registry import models_root, promote

    monkeypatch.delenv("FEATURESTORE_SIGNING_KEY", raising=False)
    store = Store(tmp_path / "store")
    now = datetime(2024, 1, 3, tzinfo=UTC)
    symbols = ["BTC/USDT", "ETH/USDT"]
    ingest_synthetic(store, symbols, "1m", since=datetime(2024, 1, 1, tzinfo=UTC), until=now, now=now)
    ingest_resampled(store, exchange="synthetic", from_timeframe="1m", timeframe="1d", now=now)
    for view in (RESEARCH, DAILY_TREND):
        backfill(store, view, now=now, progress=False)
    columns = [(view.name, feature) for view in (RESEARCH, DAILY_TREND) for feature in view.feature_names]
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, len(columns)))
    X[rng.random(X.shape) < 0.2] = np.nan  # every input missing in training: warm-up nulls may be served
    write_toy_model(models_root(store) / DEMO_MODEL / "d1", X=X, y=rng.normal(size=400), columns=columns,
                    versions={RESEARCH.name: RESEARCH.version, DAILY_TREND.name: DAILY_TREND.version},
                    ttl_seconds={RESEARCH.name: 60, DAILY_TREND.name: 86400}, name=DEMO_MODEL, version="d1")
    promote(models_root(store), DEMO_MODEL, "d1")

    run_serving_stage(store, now=now, symbols=symbols)
    first = capsys.readouterr().out
    log = store.audit_path.read_text()
    assert "the online store lacked view research for 2 symbol(s): copied 2" in first
    assert "the online store lacked view daily_trend for 2 symbol(s): copied 2" in first
    assert "scoring as of 2024-01-03T00:00:00+00:00 (the newest research row" in first
    assert "signing with the demo key (not a secret)" in first and "2 verify" in first
    assert DEMO_SIGNING_KEY not in first and DEMO_SIGNING_KEY not in log
    signals = [json.loads(line) for line in log.splitlines()]
    assert [s["symbol"] for s in signals] == symbols and all(verify_signal(s, key=DEMO_SIGNING_KEY.encode())
                                                             for s in signals)

    run_serving_stage(store, now=now + timedelta(days=1), symbols=symbols)  # the same rows: the same signals
    second = capsys.readouterr().out
    assert "lacked" not in second and store.audit_path.read_text() == log
