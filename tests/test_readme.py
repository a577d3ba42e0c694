"""The README's quick start runs as written: its marked shell blocks (``fixtures.readme``), in order, as one
bash script in an empty directory (so ``./store`` is the store), stopping at the first command that fails.
Only ``serve``'s port changes, to a free one (8000 may be taken on a shared machine); the script's own
``kill $!`` stops the server, and if a command fails before it, the script's exit does."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

from fixtures.readme import README, blocks

QUICKSTART = blocks("sh", quickstart=True)
# Every stage, in the order a newcomer meets them (the quick start must not lose one).
STAGES = ["featurestore init", "featurestore ingest", "featurestore backfill", "featurestore sql", "featurestore export",
          "featurestore train", "featurestore stream", "featurestore score", "featurestore serve", "curl"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_the_quick_start_opens_the_readme_and_walks_every_stage_on_one_timeframe():
    text = README.read_text()
    assert re.findall(r"^## (.+)$", text, re.MULTILINE)[0] == "Quick start"
    assert blocks("sh")[0].startswith("make demo") and "make test" in blocks("sh")[0]  # what the README opens with
    assert len(QUICKSTART) >= 3, "no <!-- quickstart --> blocks in the README"
    script = "\n".join(QUICKSTART)
    positions = [script.find(stage) for stage in STAGES]
    assert -1 not in positions and positions == sorted(positions), dict(zip(STAGES, positions, strict=True))
    assert re.search(r"featurestore train .*--promote", script) and re.search(r"featurestore stream .*--model", script)
    assert "--timeframe" not in script  # one timeframe: the store's


def test_the_quick_start_runs_as_written(tmp_path):
    port = _free_port()
    script = "\n".join(["set -euxo pipefail", "trap 'kill $(jobs -p) 2>/dev/null || true' EXIT",
                        *(block.replace("8000", str(port)) for block in QUICKSTART)])
    env = {k: v for k, v in os.environ.items()
           if k not in ("FEATURESTORE_HOME", "FEATURESTORE_SIGNING_KEY", "FEATURESTORE_API_TOKEN")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # featurestore, as activated
    done = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
                          check=False)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    assert "promoted quick" in done.stdout and "0 refused" in done.stdout
    assert '"view":"research","symbol":"BTC/USDT"' in done.stdout  # the served row
    assert (tmp_path / "store" / "models" / "quick" / "production").is_file() and (tmp_path / "train.parquet").is_file()
