"""``featurestore sql`` reads only the store: no other file, no ``/proc`` (so never the signing key), no
network, no extension; and ``--output`` never writes inside the store. Each through the CLI, as users run it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import store_with_bars
from featurestore.store import Store

KEY = "sql-sandbox-test-signing-key-5f2c"
STORE_FILE = "kind=bars/exchange=synthetic/timeframe=1h/symbol=BTC%2FUSDT/year=2024/bars.parquet"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    """One week of 1h bars for two symbols; never modified by these tests."""
    return store_with_bars(tmp_path_factory.mktemp("sandbox") / "store", ["BTC/USDT", "ETH/USDT"])


@pytest.fixture(autouse=True)
def signing_key(monkeypatch) -> None:
    """Every command below runs with the signing key in its environment, as ``serve`` and ``score`` do."""
    monkeypatch.setenv("FEATURESTORE_SIGNING_KEY", KEY)


def refused(result, store_root: Path) -> None:
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith(f"error: refused: featurestore sql reads only the files of the store {store_root}")
    assert len(result.stderr.splitlines()) == 1
    assert KEY not in result.stderr


OUTSIDE = {
    "the environment": "SELECT * FROM read_text('/proc/self/environ')",
    "the environment as CSV": "SELECT * FROM read_csv('/proc/self/environ', header = false, sep = '=')",
    "the environment as a blob": "SELECT * FROM read_blob('/proc/self/environ')",
    "the parent's environment": "SELECT * FROM read_text('/proc/1/environ')",
    "/etc/passwd": "SELECT * FROM read_csv('/etc/passwd')",
    "every file": "SELECT count(*) FROM glob('/**')",
    "a way out of the store": "SELECT * FROM read_text('{store}/kind=bars/../../../../proc/self/environ')",
    "a file URL": "SELECT * FROM read_text('file:///proc/self/environ')",
    "the network": "SELECT * FROM read_parquet('https://example.com/bars.parquet')",
    "the home directory": "SELECT * FROM read_text('~/.bashrc')",
}


@pytest.mark.parametrize("name", list(OUTSIDE))
def test_files_outside_the_store_are_refused(run_cli, store, name):
    refused(run_cli("sql", OUTSIDE[name].format(store=store.root), "--store", store.root), store.root)


def test_a_link_inside_the_store_to_a_file_outside_is_refused(run_cli, store, tmp_path):
    root = tmp_path / "store"
    shutil.copytree(store.root, root)
    (root / "leak").symlink_to("/proc/self/environ")
    refused(run_cli("sql", f"SELECT * FROM read_text('{root}/leak')", "--store", root), root)


@pytest.mark.parametrize("query", [
    "SELECT getenv('FEATURESTORE_SIGNING_KEY')",
    "SELECT * FROM duckdb_settings()",
    "SELECT * FROM read_text('/proc/self/environ')",
    "SELECT * FROM read_text('/proc/self/cmdline')",
])
def test_the_signing_key_is_never_readable(run_cli, store, query):
    result = run_cli("sql", query, "--format", "csv", "--store", store.root)
    assert KEY not in result.stdout + result.stderr


def test_files_of_the_store_are_readable(run_cli, store):
    result = run_cli("sql", f"SELECT count(*) AS n FROM read_parquet('{store.root}/{STORE_FILE}')", "--format", "csv",
                     "--store", store.root)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "n\n168\n"


def test_the_sandbox_settings_are_on_and_locked(run_cli, store):
    settings = ("enable_external_access", "autoinstall_known_extensions", "autoload_known_extensions",
                "allow_community_extensions", "lock_configuration")
    query = "SELECT " + ", ".join(f"current_setting('{name}') AS {name}" for name in settings)
    result = run_cli("sql", query, "--format", "csv", "--store", store.root)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1] == "false,false,false,false,true"


def test_no_extension_is_installed_or_loaded(run_cli, store, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # where DuckDB would put a downloaded extension
    for query in ("INSTALL httpfs", "LOAD httpfs", "SELECT * FROM iceberg_scan('x')", "SELECT * FROM read_xlsx('x')"):
        result = run_cli("sql", query, "--store", store.root)
        assert result.returncode == 1, query
        assert result.stderr.startswith("error: ") and len(result.stderr.splitlines()) == 1, result.stderr
    assert not (tmp_path / ".duckdb").exists()  # nothing downloaded, not even a directory made for it


# ---------------------------------------------------------------------------------------------------------
# --output


@pytest.mark.parametrize("target", [STORE_FILE, "results.csv", "kind=bars/x.parquet", "."])
def test_output_inside_the_store_is_refused_and_nothing_changes(run_cli, store, hash_tree, target):
    before = hash_tree(store.root)
    result = run_cli("sql", "SELECT * FROM bars", "--format", "parquet", "--output", store.root / target,
                     "--store", store.root)
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: --output {store.root / target} is inside the store {store.root}")
    assert len(result.stderr.splitlines()) == 1
    assert hash_tree(store.root) == before
    assert run_cli("validate", "--store", store.root).returncode == 0


def test_output_through_a_link_into_the_store_is_refused(run_cli, store, hash_tree, tmp_path):
    before = hash_tree(store.root)
    (tmp_path / "link").symlink_to(store.root)
    result = run_cli("sql", "SELECT * FROM bars", "--format", "parquet", "--output", tmp_path / "link" / STORE_FILE,
                     "--store", store.root)
    assert result.returncode == 1
    assert "is inside the store" in result.stderr
    assert hash_tree(store.root) == before
