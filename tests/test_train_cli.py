"""The export / train / models commands, run as a user runs them: the installed script in a subprocess."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import stat
import struct
import subprocess
import sys
import termios
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from featurestore import FeatureStore
from featurestore.backfill import backfill
from featurestore.builtin_views import DAILY_TREND
from featurestore.ingest import ingest_resampled, ingest_synthetic
from featurestore.registry import load_definitions
from featurestore.store import Store
from training.artifact import ModelMeta, Validation
from training.model import ModelParams

SCRIPT = str(Path(sys.executable).parent / "featurestore")
T0 = datetime(2024, 1, 1, tzinfo=UTC)
NOW = datetime(2030, 1, 1, tzinfo=UTC)
DEFINITIONS = '''
import polars as pl
from featurestore.definitions import FeatureView

close = pl.col("close")
HOURLY = FeatureView("hourly", "1h", {"ret_1": (close / close.shift(1)).log(), "ret_4": (close / close.shift(4)).log(),
                                      "log_volume": pl.col("volume").log1p()})
'''


def featurestore(*args: object, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "FEATURESTORE_HOME"}
    return subprocess.run([SCRIPT, *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env, timeout=300,
                          check=False)


def on_a_terminal(*args: object, cwd: Path) -> tuple[int, str]:
    """Run the command with stdout and stderr on a pseudo-terminal, as in a shell; (exit code, what it showed)."""
    env = {k: v for k, v in os.environ.items() if k != "FEATURESTORE_HOME"}
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # 24 x 120, as a window has
    process = subprocess.Popen([SCRIPT, *map(str, args)], stdin=subprocess.DEVNULL, stdout=follower, stderr=follower,
                               cwd=cwd, env=env)
    os.close(follower)
    shown = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # EIO: the command closed the terminal
            break
        if not data:
            break
        shown.append(data)
    os.close(leader)
    return process.wait(timeout=300), b"".join(shown).decode(errors="replace")


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(store dir, definitions file, scratch dir): 2 symbols x 40 days of 1h bars, views hourly + daily_trend."""
    root = tmp_path_factory.mktemp("cli")
    definitions = root / "defs.py"
    definitions.write_text(DEFINITIONS)
    store = Store(root / "store")
    ingest_synthetic(store, ["BTC/USDT", "ETH/USDT"], "1h", since=T0, until=T0 + timedelta(days=40), now=NOW, seed=11)
    ingest_resampled(store, exchange="synthetic", from_timeframe="1h", timeframe="1d", now=NOW)
    (hourly,) = load_definitions(definitions)
    backfill(store, hourly, now=NOW, progress=False)
    backfill(store, DAILY_TREND, now=NOW, progress=False)
    scratch = root / "work"
    scratch.mkdir()
    return store.root, definitions, scratch


def test_export_all_bars(setup):
    store, definitions, work = setup
    out = work / "train.parquet"
    done = featurestore("export", "--store", store, "--definitions", definitions, "--views", "hourly", "--all-bars",
                        "--label", "future_ret:h=1", "--out", out, cwd=work)
    assert done.returncode == 0, done.stderr
    frame = pl.read_parquet(out)
    assert frame.height == 2 * 40 * 24 and f"wrote {frame.height:,} rows" in done.stdout
    assert "%|" not in done.stderr  # no progress bar when not on a terminal
    assert frame.columns == ["symbol", "event_ts", "hourly__ts", "hourly__ret_1", "hourly__ret_4", "hourly__log_volume",
                             "future_ret_h1", "future_ret_h1__end_ts", "future_ret_h1__weight"]
    sidecar = json.loads((work / "train.parquet.json").read_text())
    assert sidecar["rows"] == frame.height and sidecar["entities"] == "all-bars"
    assert frame["future_ret_h1"].null_count() == 2  # the last row of each symbol: its bar is not stored


def test_export_entities_with_two_views_and_a_ttl(setup):
    store, definitions, work = setup
    entities = work / "entities.parquet"
    pl.DataFrame({"symbol": ["BTC/USDT", "ETH/USDT", "BTC/USDT"],
                  "event_ts": [T0 + timedelta(days=30, hours=1), T0 + timedelta(days=31, hours=5, minutes=30),
                               T0 + timedelta(days=2)],
                  "my_label": [1.0, 2.0, 3.0]}).write_parquet(entities)
    out = work / "entities_train.csv"
    done = featurestore("export", "--store", store, "--definitions", definitions, "--views", "hourly,daily_trend",
                        "--entities", entities, "--ttl", "2h", "--out", out, cwd=work)
    assert done.returncode == 0, done.stderr
    frame = pl.read_csv(out, try_parse_dates=True)
    assert frame["my_label"].to_list() == [3.0, 1.0, 2.0]  # sorted by (symbol, event_ts), extras kept
    assert frame["hourly__ret_1"].null_count() == 0
    # daily rows are stamped 00:00: 1h after midnight is within the 2h TTL, 05:30 is not
    assert frame["daily_trend__atr_14"].is_null().to_list() == [True, False, True]  # day 2: warm-up null
    assert frame["daily_trend__ts"].is_null().to_list() == [False, False, True]
    meta = json.loads(Path(f"{out}.json").read_text())
    assert [v["ttl_seconds"] for v in meta["views"]] == [7200.0, 7200.0]


def test_train_list_promote(setup):
    store, definitions, work = setup
    done = featurestore("train", "--store", store, "--definitions", definitions, "--views", "hourly,daily_trend",
                        "--label", "future_ret:h=1", "--name", "btc_reg", "--symbols", "BTC/USDT", "--folds", "2",
                        "--threads", "1", "--rounds", "50", cwd=work)
    assert done.returncode == 0, done.stderr
    assert "buy & hold" in done.stdout and "Sharpe" in done.stdout and "ONNX parity over" in done.stdout
    assert "(chosen on these folds, cost-aware)" in done.stdout and "%|" not in done.stderr
    (version_dir,) = [p for p in (store / "models" / "btc_reg").iterdir() if not p.name.startswith(".")]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(version_dir.stat().st_mode) == 0o777 & ~umask  # the umask's, not mkdtemp's 0700
    meta = ModelMeta.read(version_dir)
    assert meta.training.symbols == ("BTC/USDT",) and meta.onnx.input_dtype == "float64"
    assert meta.feature_names[:1] == ("hourly__ret_1",) and meta.feature_names[-1] == "daily_trend__mfi_14"
    assert meta.validation == Validation("walk-forward", 2, 0.0, 0.0)  # the default, recorded

    listed = featurestore("models", "list", "--store", store, cwd=work)
    assert listed.returncode == 0 and version_dir.name in listed.stdout and "production" not in listed.stdout
    promoted = featurestore("models", "promote", "btc_reg", version_dir.name, "--store", store, cwd=work)
    assert promoted.returncode == 0, promoted.stderr
    assert json.loads((store / "models" / "btc_reg" / "production").read_text())["version"] == version_dir.name
    listed = featurestore("models", "list", "--store", store, cwd=work)
    assert "production" in listed.stdout

    custom = work / "elsewhere"
    done = featurestore("models", "list", "--store", store, "--models", custom, cwd=work)
    assert done.returncode == 0 and "no models under" in done.stdout


def test_train_with_purged_kfold_and_an_embargo_from_the_cli_and_the_sdk(setup):
    """``--cv purged-kfold --embargo 3`` (bars of the label's 1h timeframe) is recorded in meta.json and report.json
    and shown; the SDK with ``embargo="3h"`` is the same model (the same version)."""
    store, definitions, work = setup
    args = ["--views", "hourly", "--label", "future_ret:h=4", "--symbols", "BTC/USDT", "--folds", "3", "--threads", "1",
            "--rounds", "20", "--cv", "purged-kfold"]
    done = featurestore("train", "--store", store, "--definitions", definitions, *args, "--embargo", "3",
                        "--name", "kfold", cwd=work)
    assert done.returncode == 0, done.stderr
    assert "cross-validation: purged-kfold, 3 test block(s), purged on future_ret_h4__end_ts, embargo 3 bar(s) " \
           "(3:00:00) after each test block" in done.stdout
    (version_dir,) = [p for p in (store / "models" / "kfold").iterdir() if not p.name.startswith(".")]
    meta = ModelMeta.read(version_dir)
    assert meta.validation == Validation("purged-kfold", 3, 10800.0, 3.0)
    report = json.loads((version_dir / "report.json").read_text())
    assert report["validation"]["scheme"] == "purged-kfold" and report["validation"]["embargo_seconds"] == 10800.0
    assert len(report["folds"]) == 3 and report["out_of_sample_rows"] == meta.training.rows  # every row tested once
    # purged and embargoed: each fold trains on fewer rows than the others' tests hold
    assert all(f["train_rows"] < meta.training.rows - f["test_rows"] for f in report["folds"])

    fs = FeatureStore(store)
    result = fs.train(features=["hourly"], label="future_ret:h=4", name="kfold", symbols=["BTC/USDT"], folds=3,
                      params=ModelParams(num_boost_round=20, num_threads=1), cv="purged-kfold", embargo="3h")
    assert (result.version, result.created, result.meta.validation) == (version_dir.name, False, meta.validation)


@pytest.mark.parametrize(("args", "message"), [
    (["train", "--views", "hourly", "--label", "future_ret:h=1", "--name", "m", "--embargo", "soon"],
     "argument --embargo: not a count of bars or a duration: 'soon'; use e.g. 3 (bars) or 2h"),
    (["train", "--views", "hourly", "--label", "future_ret:h=1", "--name", "m", "--cv", "kfold"],
     "argument --cv: invalid choice: 'kfold' (choose from 'walk-forward', 'purged-kfold')"),
])
def test_bad_cross_validation_arguments_are_usage_errors(setup, args, message):
    store, definitions, work = setup
    done = featurestore(*args, "--store", store, "--definitions", definitions, cwd=work)
    assert done.returncode == 2 and message in done.stderr, done.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["train", "--views", "hourly", "--label", "future_ret:h=1", "--name", "m", "--cv", "purged-kfold", "--folds", "1"],
     "error: purged k-fold needs at least 2 folds (each the test block once), got 1"),
    (["export", "--views", "hourly", "--entities", "{bad_entities}", "--out", "{out}"],
     "error: entity file {bad_entities}: missing column(s) ['event_ts']"),
    (["export", "--views", "hourly", "--entities", "{naive_entities}", "--out", "{out}"],
     "error: entity file {naive_entities}: column `event_ts` has naive timestamps"),
    (["export", "--views", "houryl", "--all-bars", "--out", "{out}"],
     "error: unknown feature view 'houryl'; did you mean 'hourly'?"),
    (["export", "--views", "hourly", "--all-bars", "--label", "bucket:h=3,x=-1", "--out", "{out}"],
     "error: label 'bucket:h=3,x=-1': x must be a number > 0, got '-1'"),
    (["train", "--views", "hourly", "--label", "triple_barrier:h=3", "--name", "m"],
     "error: label 'triple_barrier:h=3': pt and sl required"),
    (["train", "--views", "nope", "--label", "future_ret:h=1", "--name", "m"], "error: unknown feature view 'nope'"),
    (["train", "--views", "hourly", "--label", "future_ret:h=1", "--name", "m", "--kind", "classifier"],
     "error: a classifier needs a class label"),
    (["models", "promote", "btc_reg", "ffffffffffff"], "error: no model 'btc_reg' version 'ffffffffffff'"),
])
def test_bad_inputs_exit_1_with_a_precise_message_and_write_nothing(setup, args, message):
    store, definitions, work = setup
    bad = work / "bad_entities.csv"
    bad.write_text("symbol,when\nBTC/USDT,2024-01-05T00:00:00Z\n")
    naive = work / "naive_entities.csv"
    naive.write_text("symbol,event_ts\nBTC/USDT,2024-01-05T00:00:00\n")
    out = work / "refused.parquet"
    names = {"bad_entities": bad, "naive_entities": naive, "out": out}
    models_before = sorted(p.name for p in (store / "models").rglob("*")) if (store / "models").exists() else []
    done = featurestore(*(a.format(**names) for a in args), "--store", store,
                        *(["--definitions", definitions] if args[0] != "models" else []), cwd=work)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert message.format(**names) in done.stderr
    assert "Traceback" not in done.stderr
    assert not out.exists() and not Path(f"{out}.json").exists()
    models_after = sorted(p.name for p in (store / "models").rglob("*")) if (store / "models").exists() else []
    assert models_after == models_before


def test_long_work_shows_progress_on_a_terminal_and_nothing_otherwise(setup):
    store, definitions, work = setup
    commands = {
        "export": ["export", "--views", "hourly", "--all-bars", "--label", "future_ret:h=1", "--out",
                   work / "progress.parquet"],
        "train": ["train", "--views", "hourly", "--label", "future_ret:h=1", "--name", "progress", "--folds", "2",
                  "--threads", "1", "--rounds", "20", "--threshold", "0", "--cost-bps", "50"],
        "replay": ["stream", "--view", "hourly", "--start", T0 + timedelta(days=38), "--speed", 360_000],  # 48 h in 0.5 s
    }
    bars = {"export": "export: 100%", "train": "train progress: 100%", "replay": "replay hourly: 100%"}
    for name, args in commands.items():
        code, shown = on_a_terminal(*args, "--store", store, "--definitions", definitions, cwd=work)
        assert code == 0, shown
        assert bars[name] in shown, shown
    assert "warning: costs dominate the backtest:" in shown or name != "train"
    # Not on a terminal: no bar (export and train are run so by the tests above, and checked there).
    quiet = featurestore(*commands["replay"], "--store", store, "--definitions", definitions, cwd=work)
    assert quiet.returncode == 0 and "%|" not in quiet.stderr + quiet.stdout, quiet.stderr
