"""Every README line that runs SQL runs as written, from the directory holding ``./store``: the
``featurestore sql`` lines, the line that opens ``store/catalog.duckdb`` with DuckDB's Python API, and the SDK's
``fs.sql(...)`` lines. The store holds what the README has built by then (bars, ``research_1h``, the README's
own ``momentum`` view from its ``my_views.py``). The quick start's lines run in ``tests/test_readme.py``, on the
store the quick start builds."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from fixtures.readme import blocks

from conftest import NOW, SINCE, store_with_bars
from featurestore.backfill import backfill
from featurestore.builtin_views import builtin_view
from featurestore.ingest import ingest_synthetic
from featurestore.registry import load_definitions

SHELL_LINES = [line.strip() for body in blocks("sh", quickstart=False) for line in body.splitlines()
               if "featurestore sql" in line or "catalog.duckdb" in line]
PYTHON_LINES = [line.strip() for body in blocks("python") for line in body.splitlines() if "fs.sql(" in line]
MY_VIEWS = next(body for body in blocks("python") if body.startswith("# my_views.py"))


@pytest.fixture(scope="module")
def readme_dir(tmp_path_factory) -> Path:
    """A directory holding ``store`` (1h bars with ``research_1h``, 1m bars with ``momentum``) and ``my_views.py``."""
    root = tmp_path_factory.mktemp("readme")
    (root / "my_views.py").write_text(MY_VIEWS)
    store = store_with_bars(root / "store", ["BTC/USDT", "ETH/USDT"])
    ingest_synthetic(store, ["BTC/USDT"], "1m", since=SINCE, until=SINCE + timedelta(days=1), now=NOW)
    for view in (builtin_view("research", "1h"), *load_definitions(root / "my_views.py")):
        backfill(store, view, now=NOW)
    return root


def _run(command: list[str] | str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "FEATURESTORE_HOME"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # python, featurestore
    return subprocess.run(command, shell=isinstance(command, str), cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120, check=False)


def test_the_readme_has_sql_lines():
    assert len(SHELL_LINES) >= 3 and PYTHON_LINES


@pytest.mark.parametrize("line", SHELL_LINES)
def test_readme_shell_line_runs(readme_dir, line):
    result = _run(line, readme_dir)
    assert result.returncode == 0, result.stderr
    assert "BTC/USDT" in result.stdout


@pytest.mark.parametrize("line", PYTHON_LINES)
def test_readme_sdk_line_runs(readme_dir, line):
    code = f"from featurestore import FeatureStore\nfs = FeatureStore('store')\nprint({line})"
    result = _run([sys.executable, "-c", code], readme_dir)
    assert result.returncode == 0, result.stderr
    assert "BTC/USDT" in result.stdout
