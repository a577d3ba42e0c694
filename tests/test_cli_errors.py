"""No traceback from any verb: malformed arguments and damaged inputs end in one ``error: ...`` line on stderr,
a non-zero exit, and the store as it was (issue 13 item 9).

Every verb of ``featurestore --help`` has cases here: ``test_every_verb_has_cases`` reads the verbs from the
parser, so a new verb fails until it has some. Most cases call ``app.cli.main.main``, the function the console
script runs, in this process, with what reaches file descriptors 1 and 2 captured (a Rust panic would show);
the ones that start a Bytewax flow or a server run as the console script, where a crash or a hang cannot take
the session with it. All share one copy of the monitored store (a model, signals, the online store).
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
from pathlib import Path

import pytest
from fixtures.monitored import MODEL, VIEW

from app.cli.main import _parser, main

LONG_SYMBOL = "A" + "B" * 300 + "/USDT"
CSV_HEAD = "time,open,high,low,close,volume"
INPUTS = {  # name -> the bytes of a damaged input the cases pass
    "nan.csv": f"{CSV_HEAD}\n1704067200,1,2,0.5,nan,10\n".encode(),
    "ok.csv": f"{CSV_HEAD}\n1704067200,1,2,0.5,1.5,10\n".encode(),
    "two_volumes.csv": f"{CSV_HEAD},Volume\n1704067200,1,2,0.5,1,10,10\n".encode(),
    "not_bars.csv": b"a,b\n1,2\n",
    "garbage.bin": bytes(range(128, 256)) * 4 + b"\n",  # one line, not UTF-8
    "syntax.py": b"def broken(:\n",
    "signals.jsonl": b'{"symbol": "BTC/USDT"}\n',
    "damaged_store/online.sqlite": b"not a database" * 100,
}

# verb -> (arguments after the verb, exit code, text the error line holds). {store}: the shared store,
# {inputs}: the directory of INPUTS.
CASES: dict[str, list[tuple[str, ...] | tuple]] = {
    "init": [(["--timeframe", "7x"], 2, "unknown timeframe '7x'"),
             (["--online-store", "ftp://x"], 1, "online_store must be a URL")],
    "ingest": [(["--seed", "-1"], 2, "'-1' is not a whole number >= 0"),
               (["--symbols", LONG_SYMBOL], 2, "characters long; a market symbol has at most 64"),
               (["--start", "2024-02-01", "--end", "2024-01-01"], 2, "is not after --start"),
               (["--end", "2023-06-01"], 1, "is not after --start 2024-01-01T00:00:00+00:00 (the default start"),
               (["--source", "csv", "--path", "{inputs}/nan.csv", "--symbol", "BTC/USDT", "--timeframe", "1h"], 1,
                "line 2): rule 'numeric field' broken: close='nan' is not a finite number"),
               (["--source", "csv", "--path", "{inputs}/two_volumes.csv", "--symbol", "BTC/USDT"], 1,
                "columns 'volume' and 'Volume' both read as volume"),
               (["--source", "csv", "--path", "{inputs}/garbage.bin", "--symbol", "BTC/USDT"], 1, "not UTF-8 text (byte 0)"),
               (["--source", "csv", "--path", "{inputs}/missing.csv", "--symbol", "BTC/USDT"], 1, "does not exist"),
               (["--source", "csv", "--path", "{inputs}/ok.csv", "--symbol", "BTC/USDT", "--timeframe", "1h",
                 "--exchange", "x" * 300], 1, "is too long to store"),
               (["--source", "csv", "--path", "{inputs}/nan.csv", "--symbol", "X/USDT", "--timezone", "CEST"], 2,
                "unknown time zone 'CEST'")],
    "validate": [(["--symbols", "BTCUSDT"], 2, "did you mean 'BTC/USDT'?"),
                 (["--symbols", "NOPE/USDT"], 1, "no stored bars for ['NOPE/USDT']")],
    "compact": [(["--symbols", "NOPE/USDT"], 1, "no stored bars for ['NOPE/USDT']"),
                (["--timeframe", "7x"], 2, "unknown timeframe '7x'")],
    "sql": [(["SELECT 'infinity'::TIMESTAMP AS t"], 1, "outside the range polars can write"),
            (["SELECT 'ab'::BLOB AS b", "--format", "json"], 1, "JSON has no binary type"),
            (["SELECT 1 AS a, 2 AS a"], 1, "2 columns named 'a'; name them apart with AS"),
            (["SELECT 1", "--output", "{inputs}"], 1, "is a directory; name a file in it"),
            (["SELECT 1", "--output", "{inputs}/garbage.bin/x.csv"], 1, "garbage.bin is a file, not a directory"),
            (["DROP VIEW bars"], 1, "refused"),
            (["SELECT * FROM bars", "--store", "{inputs}/no_store"], 1, "(the directory does not exist)")],
    "apply": [(["{inputs}/not_bars.csv"], 1, "is not a Python module (.py)"),
              (["{inputs}/syntax.py"], 1, "SyntaxError"),
              (["--builtin", "nope"], 1, "unknown built-in template 'nope'")],
    "features": [(["show", "research", "--definitions", "{inputs}/not_bars.csv"], 1, "is not a Python module"),
                 (["show", "nope"], 1, "unknown feature view 'nope'"),
                 (["frobnicate"], 2, "invalid choice: 'frobnicate'")],
    "backfill": [(["--views", "nope"], 1, "unknown feature view 'nope'"),
                 (["--views", VIEW, "--workers", "0"], 2, "'0' is not a whole number >= 1")],
    "demo": [(["--seed", "-1"], 2, "'-1' is not a whole number >= 0"),
             (["--regime-volatility", "0"], 2, "'0' is not a finite number > 0")],
    "export": [(["--views", VIEW, "--all-bars", "--out", "{inputs}"], 2, "is a directory"),
               (["--views", VIEW, "--entities", "{inputs}/not_bars.csv", "--out", "{inputs}/x.parquet"], 1,
                "missing column(s) ['symbol', 'event_ts']"),
               (["--views", VIEW, "--entities", "{inputs}/garbage.bin", "--out", "{inputs}/x.parquet"], 1,
                "unknown format '.bin'")],
    "train": [([*("--views", VIEW, "--label", "future_ret:h=1", "--name", "m"), "--folds", "0"], 2,
               "'0' is not a whole number >= 1"),
              ([*("--views", VIEW, "--label", "future_ret:h=1", "--name", "m"), "--rounds", "0"], 2,
               "'0' is not a whole number >= 1"),
              ([*("--views", VIEW, "--label", "future_ret:h=1", "--name", "m"), "--threshold", "nan"], 2,
               "'nan' is not a finite number >= 0"),
              (["--views", VIEW, "--label", "bogus", "--name", "m"], 1, "unknown kind 'bogus'")],
    "models": [(["promote", "nope", "1"], 1, "no model 'nope' version '1'"),
               (["list", "--models", "{inputs}/garbage.bin"], 2, "is a file, not a directory")],
    "stream": [(["--view", VIEW, "--batch", "0"], 2, "'0' is not a whole number >= 1"),
               (["--view", VIEW, "--speed", "nan"], 2, "'nan' is not a finite number >= 0"),
               (["--view", VIEW, "--jsonl", "{inputs}"], 2, "is a directory"),
               (["--view", "nope"], 1, "unknown feature view 'nope'")],
    "parity": [(["--view", VIEW, "--batch", "0"], 2, "'0' is not a whole number >= 1"),
               (["--view", VIEW, "--symbols", "NOPE/USDT"], 1, "no stored bars for ['NOPE/USDT']")],
    "score": [(["--symbols", "BTC/USDT", "--model", "nope"], 1, "model 'nope' has no production version"),
              (["--symbols", "BTC/USDT", "--model", MODEL, "--size", "nan"], 2, "'nan' is not a finite number > 0"),
              (["--symbols", "BTC/USDT", "--model", MODEL, "--as-of", "2024-03-01T01:00", "--audit",
                "{inputs}/garbage.bin"], 1, "garbage.bin line 1: not UTF-8 text")],
    "serve": [(["--port", "99999"], 2, "is not a TCP port"),
              (["--max-batch", "0"], 2, "'0' is not a whole number >= 1"),
              (["--model", "nope"], 1, "model 'nope' has no production version")],
    "verify-signal": [(["{inputs}/missing.jsonl"], 1, "no signal log at"),
                      (["{inputs}/garbage.bin"], 1, "not UTF-8 text"),
                      (["{inputs}/signals.jsonl"], 1, "line 1")],
    "materialize": [(["--view", "nope"], 1, "unknown feature view 'nope'"),
                    (["--view", VIEW, "--symbols", "NOPE/USDT"], 1, "no offline rows")],
    "online": [(["get", "--view", VIEW, "--store", "{inputs}/damaged_store"], 1,
                "online.sqlite cannot be read (file is not a database)"),
               (["frob", "--view", VIEW], 2, "invalid choice: 'frob'")],
    "monitor": [(["--model", MODEL, "--window", "0s"], 1, "the window must be positive"),
                (["--model", MODEL, "--json", "{inputs}"], 2, "is a directory"),
                (["--model", "nope"], 1, "model 'nope' has no production version")],
    "consistency": [(["--view", "nope"], 1, "unknown feature view 'nope'"),
                    (["--view", VIEW, "--json", "{inputs}"], 2, "is a directory")],
}
# Cases that start a Bytewax flow or a server: run as the console script, in a process of their own.
SUBPROCESS_CASES = [
    ("stream", ["--view", VIEW, "--source", "ccxt", "--symbols", "BTC/USDT"], 1,
     "no stored 1h bars of BTC/USDT from binance to start the live stream after"),
    ("serve", ["--model", MODEL, "--audit", "{inputs}/garbage.bin"], 1, "garbage.bin line 1: not UTF-8 text"),
]


def verbs(parser: argparse.ArgumentParser) -> set[str]:
    (commands,) = (action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    return set(commands.choices)


@pytest.fixture(scope="module")
def store(monitored, tmp_path_factory) -> Path:
    """A copy of the monitored store, shared by every case (each checks it is left as it was)."""
    copy = tmp_path_factory.mktemp("errors") / "store"
    shutil.copytree(monitored.root, copy)
    return copy


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("inputs")
    for name, data in INPUTS.items():
        (directory / name).parent.mkdir(exist_ok=True)
        (directory / name).write_bytes(data)
    return directory


def stored(store: Path, hash_tree) -> tuple[dict[str, str], list[Path], list[str]]:
    """Every file's hash, every directory (none left empty), the online store by its rows (opening SQLite in WAL
    mode rewrites its side files)."""
    files = {name: digest for name, digest in hash_tree(store).items() if not name.startswith("online.sqlite")}
    with sqlite3.connect(store / "online.sqlite") as online:
        return files, sorted(path for path in store.rglob("*") if path.is_dir()), list(online.iterdump())


def argv(verb: str, args: list[str], store: Path, inputs: Path) -> list[str]:
    filled = [arg.format(store=store, inputs=inputs) for arg in args]
    return [verb, *(["--store", str(store)] if "--store" not in filled else []), *filled]


def assert_one_line_error(code: int, stderr: str, expected_code: int, expected: str) -> None:
    assert "Traceback" not in stderr and "panicked" not in stderr, stderr
    assert code == expected_code, stderr
    errors = [line for line in stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and stderr.rstrip().splitlines()[-1] == errors[0], stderr
    assert expected in errors[0], stderr
    if code == 1:  # a user error: at most warnings before it, never the usage text
        assert all(line.startswith("warning:") for line in stderr.splitlines()[:-1]), stderr


def test_every_verb_has_cases():
    assert verbs(_parser()) == set(CASES)


@pytest.mark.parametrize(("verb", "args", "code", "expected"),
                         [(verb, args, code, expected) for verb, cases in CASES.items()
                          for args, code, expected in cases],
                         ids=[f"{verb}-{i}" for verb, cases in CASES.items() for i in range(len(cases))])
def test_bad_input_is_a_one_line_error_and_leaves_the_store_alone(store, inputs, capfd, hash_tree, verb, args, code,
                                                                   expected):
    before, inputs_before = stored(store, hash_tree), hash_tree(inputs)
    try:
        exit_code = main(argv(verb, args, store, inputs))
    except SystemExit as usage:  # argparse's exit on a usage error
        exit_code = usage.code
    _, stderr = capfd.readouterr()
    assert_one_line_error(exit_code, stderr, code, expected)
    assert stored(store, hash_tree) == before
    assert hash_tree(inputs) == inputs_before


@pytest.mark.parametrize(("verb", "args", "code", "expected"), SUBPROCESS_CASES, ids=[c[0] for c in SUBPROCESS_CASES])
def test_bad_input_of_a_flow_or_a_server_is_a_one_line_error(run_cli, store, inputs, hash_tree, verb, args, code,
                                                              expected):
    before = stored(store, hash_tree)
    result = run_cli(*argv(verb, args, store, inputs), timeout=30)
    assert_one_line_error(result.returncode, result.stderr, code, expected)
    assert stored(store, hash_tree) == before


def test_a_sql_statement_after_a_comment_answers(store, capfd):
    """``/* c */ EXPLAIN SELECT 1`` once recursed until Python gave up."""
    assert main(["sql", "/* c */ EXPLAIN SELECT 1", "--store", str(store)]) == 0
    out, err = capfd.readouterr()
    assert "DUMMY_SCAN" in out.upper().replace(" ", "_") and not err
