"""Fixtures shared by ``tests/``, ``benchmarks/`` and the doctests: a real ``redis-server`` on a free loopback port.

The server runs from a temporary directory with persistence off, one per session, and is stopped at the end.
``make test`` installs the Debian package when it is missing (``tools/system-packages.sh``).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis


@dataclass(frozen=True)
class RedisServer:
    """A running ``redis-server`` on 127.0.0.1."""

    port: int
    directory: Path

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def fresh(self, db: int = 0) -> str:
        """The URL of database ``db``, emptied first."""
        with redis.Redis(port=self.port, db=db) as client:
            client.flushdb()
        return self.url(db)


def _start(executable: str, directory: Path) -> tuple[subprocess.Popen, int]:
    """Start a server on a free port (another one if a process took the port meanwhile)."""
    for _ in range(5):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        process = subprocess.Popen([executable, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory),
                                    "--save", "", "--appendonly", "no", "--loglevel", "warning"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 20
        while process.poll() is None and time.monotonic() < deadline:
            try:
                with redis.Redis(port=port, socket_connect_timeout=1) as client:
                    client.ping()
                return process, port
            except redis.exceptions.ConnectionError:
                time.sleep(0.02)
        process.kill()
        process.wait()
    raise RuntimeError(f"redis-server did not start on a free port: {process.stderr.read().decode()}")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A ``redis-server`` of this test session (databases 0-15; ``fresh(db)`` empties one)."""
    executable = shutil.which("redis-server")
    if executable is None:
        pytest.fail("redis-server is not installed: run tools/system-packages.sh redis-server (make test does it)")
    directory = tmp_path_factory.mktemp("redis")
    process, port = _start(executable, directory)
    try:
        yield RedisServer(port, directory)
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(autouse=True)
def _redis_for_doctests(request: pytest.FixtureRequest) -> None:
    """The doctests of the Redis online store get ``redis_url``, an empty database of the session's server."""
    if isinstance(request.node, pytest.DoctestItem) and request.node.name.startswith("featurestore.online.redis"):
        request.getfixturevalue("doctest_namespace")["redis_url"] = request.getfixturevalue("redis_server").fresh(15)
