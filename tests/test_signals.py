"""Signals: sides, the position-transition table, HMAC signing, the audit log, and the score / verify-signal CLI."""

from __future__ import annotations

import functools
import json
import math
import os
import re
import secrets
import socket
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fixtures.toy_model import toy_store, write_toy_model

from featurestore.errors import AuditLogError, FeatureStoreError
from featurestore.online import OnlineRow
from featurestore.online.sqlite import SqliteOnlineStore
from featurestore.store import Store
from serving.audit import AuditLog, head_path, verify_log
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
    return SignalService(Scorer(load_model(model), SqliteOnlineStore(online, readonly=True)),
                         audit=AuditLog(audit, key=KEY), **kwargs)


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
    assert [(s["seq"], s["mode"]) for s in logged] == [(1, "live"), (2, "live"), (3, "live")]

    with service(service_parts, thresholds=Thresholds(1.0, -1.0), size=3.0) as restarted:  # every score is FLAT now
        closed = restarted.signals(["BTC/USDT", "ETH/USDT"], now=T + timedelta(minutes=1))
    assert [(s["previous_side"], s["side"], s["action"], s["quantity"], s["position_after"]) for s in closed] == [
        ("SHORT", "FLAT", "BUY", 3.0, 0.0), ("SHORT", "FLAT", "BUY", 3.0, 0.0)]
    assert verify_log(service_parts[2], key=KEY).problems == []


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
    changed = ("x" if value is None else value + "x" if isinstance(value, str) else not value if isinstance(value, bool)
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


def chained_log(path: Path, n: int = 5) -> list[bytes]:
    """A log of ``n`` signals (two models, three symbols) written and closed by ``AuditLog``; its lines."""
    with AuditLog(path, key=KEY, fsync=False) as log:
        log.append([{"model": "m" if i % 3 else "other", "symbol": f"S{i % 3}/USDT", "side": "LONG" if i % 2 else
                     "SHORT", "n": i} for i in range(1, n + 1)])
    return path.read_bytes().splitlines(keepends=True)


def rewrite(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(lines))


# Each: what is done to a 5-signal log (its lines), and the problem verify_log must name.
TAMPERING = {
    "a line deleted": (lambda x: x[:2] + x[3:], r"line 3: seq 4 follows seq 2: 1 signal\(s\) missing before it"),
    "two lines swapped": (lambda x: [x[0], x[2], x[1], *x[3:]],
                          r"line 3: seq 2 comes after a later seq: lines out of order"),
    "an older signal appended again": (lambda x: [*x, x[1]], r"line 6: seq 2 again: a copy of line 2 \(an older signal "
                                                              r"appended again\)"),
    "lines cut off the end": (lambda x: x[:3], r"the log ends at seq 3, its head at seq 5: 2 signal\(s\) cut off the end"),
    "a key given twice": (lambda x: [x[0], x[1].replace(b'{', b'{"side":"FLAT",', 1), *x[2:]],
                          r"line 2: key 'side' appears twice \(readers would disagree on its value\)"),
    "a field edited": (lambda x: [x[0], x[1].replace(b'"n":2', b'"n":7'), *x[2:]],
                       r"line 2: signature does not match \(symbol 'S2/USDT'\)"),
    "a line that is not UTF-8": (lambda x: [x[0], b"\xff\xfe\n", *x[1:]], r"line 2: not UTF-8 text \(byte 0\)"),
    "a deeply nested line": (lambda x: [*x, b"[" * 100_000 + b"]" * 100_000 + b"\n"],
                             r"line 6: nested too deeply to be a signal"),
    "an empty line": (lambda x: [x[0], b"\n", *x[1:]], r"line 2: an empty line"),
}


@pytest.mark.parametrize("case", sorted(TAMPERING))
def test_the_chain_names_every_kind_of_tampering(tmp_path, case):
    path = tmp_path / "signals.jsonl"
    tamper, problem = TAMPERING[case]
    rewrite(path, tamper(chained_log(path)))
    report = verify_log(path, key=KEY)
    assert any(re.search(problem, p) for p in report.problems), report.problems
    assert all(p.startswith(str(path)) for p in report.problems)


def test_an_untouched_chain_verifies_and_its_head_guards_its_end(tmp_path):
    path = tmp_path / "signals.jsonl"
    lines = chained_log(path)
    signals = [json.loads(line) for line in lines]
    assert [(s["seq"], s["prev"]) for s in signals] == [(1, None), *((i + 2, s["signature"]) for i, s in
                                                                     enumerate(signals[:-1]))]
    report = verify_log(path, key=KEY)
    assert (report.problems, report.warnings, report.signals, report.seq, report.head_seq) == ([], [], 5, 5, 5)
    assert verify_log(path, key=b"another key").problems[:2] == [
        f"{path}.head: the log's head does not verify (edited, or signed with another key)",
        f"{path} line 1: signature does not match (symbol 'S1/USDT')"]
    assert oct(path.stat().st_mode & 0o777) == "0o600"

    head = head_path(path)
    head.write_text(head.read_text().replace('"seq":5', '"seq":4'))
    assert re.search(r"\.head: the log's head does not verify", verify_log(path, key=KEY).problems[0])
    head.unlink()
    assert verify_log(path, key=KEY).problems == [f"{path}: no signed head beside the log (signals.jsonl.head): "
                                                  f"signals cut off the end could not be detected"]


def test_a_torn_last_line_is_a_warning_and_the_next_writer_cuts_it_back(tmp_path, caplog):
    path = tmp_path / "signals.jsonl"
    lines = chained_log(path)
    rewrite(path, [*lines, lines[0][:40]])  # a write cut short: no newline
    report = verify_log(path, key=KEY)
    assert report.problems == [] and report.torn_at == len(b"".join(lines))
    assert report.warnings == [f"{path} line 6: the last line has no newline (a write cut short by a crash): not a "
                               f"signal; the next writer cuts it back"]
    with AuditLog(path, key=KEY) as log:
        assert f"{path}: cut back to {report.torn_at} bytes" in caplog.text
        log.append([{"model": "m", "symbol": "S1/USDT", "side": "FLAT"}])
    assert path.read_bytes().startswith(b"".join(lines)) and verify_log(path, key=KEY).seq == 6
    assert verify_log(path, key=KEY).problems == []


def test_a_writer_refuses_a_log_that_does_not_verify_and_a_log_already_open(tmp_path):
    path = tmp_path / "signals.jsonl"
    lines = chained_log(path)
    rewrite(path, [*lines, lines[1]])  # an older signal appended again: it would become the position
    with pytest.raises(AuditLogError, match=r"refusing to append to .*signals.jsonl: it does not verify: .*line 6: seq 2 "
                                            r"again.*featurestore verify-signal .*; move it aside to start a new log"):
        AuditLog(path, key=KEY)
    rewrite(path, lines)
    with AuditLog(path, key=KEY) as log, pytest.raises(AuditLogError, match="being written by another process"):
        AuditLog(path, key=KEY)
    assert log.last("m") == {s["symbol"]: s for s in map(json.loads, lines) if s["model"] == "m"}


def test_a_log_written_before_the_chain_verifies_with_a_warning_and_the_chain_continues_it(tmp_path):
    path = tmp_path / "signals.jsonl"
    legacy = [sign_signal({"model": "m", "symbol": "A", "side": side}, key=KEY) for side in ("LONG", "SHORT")]
    path.write_text("".join(json.dumps(s) + "\n" for s in legacy))
    report = verify_log(path, key=KEY)
    assert report.problems == [] and report.legacy == 2
    assert report.warnings == [f"{path}: 2 signal(s) written before hash chaining (lines 1-2): each signature verifies, "
                               f"but their deletion, reordering or truncation cannot be detected"]
    with AuditLog(path, key=KEY) as log:
        assert log.last("m")["A"]["side"] == "SHORT"  # the position continues from the legacy lines
        (chained,) = log.append([{"model": "m", "symbol": "A", "side": "FLAT"}])
    assert (chained["seq"], chained["prev"]) == (3, legacy[1]["signature"])
    assert verify_log(path, key=KEY).problems == []
    path.write_text(path.read_text() + json.dumps(legacy[0]) + "\n")  # an unchained line after the chain
    assert verify_log(path, key=KEY).problems[0].endswith("line 4: a signal without seq after chained ones: inserted")


# --- the CLI, as a user runs it ----------------------------------------------------------------------


def featurestore(*args: object, cwd: Path, key: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("FEATURESTORE_HOME", "FEATURESTORE_SIGNING_KEY")}
    if key is not None:
        env["FEATURESTORE_SIGNING_KEY"] = key
    return subprocess.run([SCRIPT, *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env, timeout=120,
                          check=False)


def test_score_and_verify_signal_commands(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    now = datetime.now(UTC)  # the CLI scores at the wall clock: rows of now are fresh (TTL 1h)
    store = toy_store(tmp_path, [OnlineRow("toy", "BTC/USDT", now, "v1", {"a": 0.5, "b": None}, now),
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
                                           f"error: {log} line 4: signature does not match (symbol 'ETH/USDT')",
                                           f"error: {log}: the log ends at seq 2, its head at seq 3: 1 signal(s) cut "
                                           f"off the end, or among the lines above that do not verify"]
    log.write_text("\n".join([lines[0], lines[2]]) + "\n")  # the second signal deleted
    deleted = run("verify-signal", log)
    assert deleted.returncode == 1 and deleted.stderr.splitlines()[0] == (
        f"error: {log} line 2: seq 3 follows seq 1: 1 signal(s) missing before it (deleted, or moved later)")
    assert run("verify-signal", log, key="another key").returncode == 1
    assert run("verify-signal", log, key=None).returncode == 1
    assert run("verify-signal", tmp_path / "absent.jsonl").returncode == 1

    outputs = "".join(r.stdout + r.stderr for r in runs)
    assert key not in outputs
    files = [p for root in (store, work) for p in root.rglob("*") if p.is_file()]
    assert files and not [p for p in files if key.encode() in p.read_bytes()]


def fresh_store(root: Path) -> Path:
    """The toy model in production and a BTC/USDT row written now (the CLI scores at the wall clock)."""
    now = datetime.now(UTC)
    return toy_store(root, [OnlineRow("toy", "BTC/USDT", now, "v1", {"a": 0.5, "b": 1.0}, now)])


def test_score_as_of_scores_history_with_ages_measured_from_that_moment(tmp_path):
    then = datetime(2024, 5, 1, 12, tzinfo=UTC)  # a replayed row: years older than its TTL against the wall clock
    store = toy_store(tmp_path, [OnlineRow("toy", "BTC/USDT", then, "v1", {"a": 0.5, "b": 1.0}, then)])
    run = functools.partial(featurestore, "score", "--symbols", "BTC/USDT", "--store", store, cwd=tmp_path, key="k")

    now = run()
    assert now.returncode == 1 and "older than the max age 1:00:00 (to score an earlier moment, give it with " \
        "--as-of; to accept older rows, --max-age)" in now.stderr
    (signal,) = map(json.loads, run("--as-of", "2024-05-01T12:30").stdout.splitlines())
    assert (signal["ts"], signal["side"], signal["mode"]) == ("2024-05-01T12:00:00+00:00", "LONG", "replay")
    assert [json.loads(line) for line in Store(store).replay_audit_path.read_text().splitlines()] == [signal]
    assert Store(store).audit_path.read_text() == ""  # history never becomes the live position
    before = run("--as-of", "2024-05-01T11:00")
    assert before.returncode == 1 and "is after the scoring time 2024-05-01T11:00:00+00:00" in before.stderr
    late = run("--as-of", "2024-05-01T14:00")
    assert late.returncode == 1 and "is 2:00:00 old at 2024-05-01T14:00:00+00:00" in late.stderr


@pytest.mark.parametrize(("command", "damage", "problem"), [
    ("score", b"\xff\xfe\n", "line 1: not UTF-8 text (byte 0)"),
    ("serve", b"[" * 100_000 + b"]" * 100_000 + b"\n", "line 1: nested too deeply to be a signal"),
])
def test_a_damaged_log_is_a_clear_error_when_a_writer_starts(tmp_path, command, damage, problem):
    store = fresh_store(tmp_path)
    log = Store(store).audit_path
    log.parent.mkdir()
    log.write_bytes(damage)
    with socket.socket() as probe:  # serve refuses before it binds: a free port, should it not
        probe.bind(("127.0.0.1", 0))
        args = ["--symbols", "BTC/USDT"] if command == "score" else ["--port", str(probe.getsockname()[1])]
    done = featurestore(command, *args, "--store", store, cwd=tmp_path, key="k")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith(f"error: refusing to append to {log}: it does not verify: {log} {problem}. Check it "
                                  f"with featurestore verify-signal {log}; move it aside to start a new log")
    assert log.read_bytes() == damage


def test_score_cuts_a_torn_last_line_back_with_a_warning_and_continues_the_chain(tmp_path):
    store = fresh_store(tmp_path)
    first = featurestore("score", "--symbols", "BTC/USDT", "--store", store, cwd=tmp_path, key="k")
    assert first.returncode == 0, first.stderr
    log = Store(store).audit_path
    whole = log.read_bytes()
    log.write_bytes(whole + whole[:30])  # a second append cut short by a crash
    with SqliteOnlineStore(Store(store).online_path) as online:
        now = datetime.now(UTC)
        online.put_many([OnlineRow("toy", "BTC/USDT", now, "v1", {"a": -0.5, "b": 1.0}, now)])

    second = featurestore("score", "--symbols", "BTC/USDT", "--store", store, cwd=tmp_path, key="k")

    assert second.returncode == 0, second.stderr
    assert f"{log}: cut back to {len(whole)} bytes, the end of its last whole line" in second.stderr
    assert log.read_bytes().startswith(whole)
    assert [json.loads(line)["seq"] for line in log.read_text().splitlines()] == [1, 2]
    assert featurestore("verify-signal", log, cwd=tmp_path, key="k").returncode == 0


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
    log = store.replay_audit_path.read_text()  # scored as of a past moment: a replay, in the replay log
    assert "the online store lacked view research for 2 symbol(s): copied 2" in first
    assert "the online store lacked view daily_trend for 2 symbol(s): copied 2" in first
    assert "scoring as of 2024-01-03T00:00:00+00:00 (the newest research row" in first
    assert "signing with the demo key (not a secret)" in first and "2 verify" in first
    assert DEMO_SIGNING_KEY not in first and DEMO_SIGNING_KEY not in log
    signals = [json.loads(line) for line in log.splitlines()]
    assert [s["symbol"] for s in signals] == symbols and all(verify_signal(s, key=DEMO_SIGNING_KEY.encode())
                                                             for s in signals)
    assert {s["mode"] for s in signals} == {"replay"} and not store.audit_path.exists()

    run_serving_stage(store, now=now + timedelta(days=1), symbols=symbols)  # the same rows: the same signals
    second = capsys.readouterr().out
    assert "lacked" not in second and store.replay_audit_path.read_text() == log
