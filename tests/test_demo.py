"""``featurestore demo``: the main job end to end, and safe to re-run."""

from __future__ import annotations

import re

import pytest

from featurestore.store import Store

DEMO = ["demo", "--symbols", "BTC/USDT,ETH/USDT", "--since", "2024-01-01"]


def table_rows(output: str, symbol: str) -> list[list[str]]:
    """The cells of every printed table row that has ``symbol`` as a cell."""
    rows = []
    for line in output.splitlines():
        cells = [cell.strip() for cell in line.replace("│", "┆").split("┆")[1:-1]]
        if symbol in cells:
            rows.append(cells)
    return rows


def data_files(hashes: dict[str, str]) -> dict[str, str]:
    """Stored data: bars, features, the row log, registry, models. Not the online store and the stream's run
    metrics, which a re-run legitimately rewrites (same rows, new ``updated_at`` and counters), nor the signal
    audit log, which every scoring appends to, nor the monitoring reports (stamped when generated)."""
    return {path: digest for path, digest in hashes.items()
            if not path.startswith(("online.sqlite", "stream/metrics-", "catalog.duckdb", "signals/", "monitor/"))}


def check_demo_twice(run_cli, hash_tree, store, until: str, bars_per_symbol: int, last_bar: str) -> None:
    args = [*DEMO, "--until", until, "--store", store]

    first = run_cli(*args)

    assert first.returncode == 0, first.stderr
    assert "Traceback" not in first.stderr
    assert re.search(rf"stored {2 * bars_per_symbol:,} new bars in [0-9.]+ s into {re.escape(str(store))}",
                     first.stdout)
    assert "0 gap(s), 0 broken rule(s)" in first.stdout
    assert "== sql: SELECT symbol, count(*) AS bars" in first.stdout
    for symbol in ("BTC/USDT", "ETH/USDT"):
        # The SQL table: one row per symbol with its bar count and its first and last bar.
        assert [symbol, str(bars_per_symbol), "2024-01-01 00:00:00 UTC", last_bar] in [
            row[:4] for row in table_rows(first.stdout, symbol)]
    assert "featurestore sql \"SELECT ...\"" in first.stdout
    # the regime switch two days before the end: the flow served those days, and monitor raised the drift
    assert "regime switch at 2024-01-13 00:00 (volatility x3" in first.stdout
    assert "row log (featurestore consistency --view research): CONSISTENT" in first.stdout
    assert re.search(r"model demo_research_reg \w+: ALERT; window 2024-01-14T00:00:00\+00:00 .. "
                     r"2024-01-15T00:00:00\+00:00, 2,880 rows from signals", first.stdout)
    assert re.search(r"ALERT +feature_drift +research__rv_24 +psi", first.stdout)
    assert Store(store).scan_bars("synthetic", "1m").collect().height == 2 * bars_per_symbol
    before = hash_tree(store)

    second = run_cli(*args)

    assert second.returncode == 0, second.stderr
    assert "stored 0 new bars" in second.stdout and "(already stored: nothing to do)" in second.stdout
    assert data_files(hash_tree(store)) == data_files(before)


@pytest.mark.slow
def test_demo_on_minute_bars_runs_end_to_end_and_a_rerun_stores_nothing_new(tmp_path, run_cli, hash_tree):
    # Two weeks of 1m bars: 14 x 1,440 = 20,160 per symbol.
    check_demo_twice(run_cli, hash_tree, tmp_path / "store", "2024-01-15", 20_160, "2024-01-14 23:59:00 UTC")
