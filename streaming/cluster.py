"""The processes of a cluster agree before they run: the same options everywhere, or an error naming the difference.

Bytewax (timely dataflow) connects the processes of a cluster and runs the flow each of them built. When
the flows differ, one process given ``--jsonl`` and another not, they wait for each other forever, with
no output and no error. So before Bytewax starts, every process calls ``join``: process 0 listens on its
own cluster address (the port Bytewax takes next), every other process connects to it and sends the
options it was started with; process 0 compares them with its own and answers everyone the same
verdict. Go, with process 0's ``shared`` values (the moment of a backfill, so that the whole cluster
stamps one ``created_at``), or the differences, named, and every process exits with them. A process that
does not show up within ``timeout_s`` is an error too. Only then does anyone start Bytewax.

>>> from concurrent.futures import ThreadPoolExecutor
>>> addresses = [f"127.0.0.1:{free_port()}", "127.0.0.1:2102"]  # join listens on process 0's port only
>>> def start(options):  # both processes at once (threads here), each with its own clock
...     with ThreadPoolExecutor(2) as pool:
...         runs = [pool.submit(join, i, addresses, options[i], shared={"now": f"t{i}"}) for i in (0, 1)]
...     return [run.exception() or run.result() for run in runs]
>>> start([{"jsonl": None}, {"jsonl": None}])
[{'now': 't0'}, {'now': 't0'}]
>>> print(start([{"jsonl": "rows.jsonl"}, {"jsonl": None}])[1])
the processes of the cluster were started with different options: jsonl is 'rows.jsonl' on process 0 but
None on process 1; start every process with the same command (only --process-id differs)
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Mapping, Sequence
from importlib.metadata import version
from typing import Any

from featurestore.errors import FeatureStoreError

__all__ = ["free_port", "join"]

_POLL_S = 0.1
# After the go, process k waits k times this before its caller starts Bytewax, so that the processes it connects
# to (the lower ones) listen already: Bytewax retries a refused connection only once a second.
_STAGGER_S = 0.25
_STEPS = "steps"  # the flow's step ids, derived from the other options


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _host_port(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise FeatureStoreError(f"cluster address {address!r} is not host:port, e.g. 127.0.0.1:2101")
    return host, int(port)


def _send(conn: socket.socket, message: Mapping[str, Any]) -> None:
    conn.sendall(json.dumps(message).encode() + b"\n")


def _receive(conn: socket.socket, deadline: float, who: str) -> dict[str, Any]:
    conn.settimeout(max(0.01, deadline - time.monotonic()))
    line = b""
    try:
        line = conn.makefile("rb").readline(1 << 20)
        message = json.loads(line) if line else None
    except TimeoutError:
        raise FeatureStoreError(f"{who} sent nothing in time") from None
    except (OSError, ValueError):
        message = None
    if not line:
        raise FeatureStoreError(f"{who} closed the connection without an answer: see the error it printed")
    if not isinstance(message, dict):
        raise FeatureStoreError(f"{who} is not a featurestore process of this cluster (it sent something else); "
                                f"start every process with the same featurestore command")
    return message


def _differences(options: Mapping[str, dict[str, Any]]) -> list[str]:
    """What differs from process 0's options, one phrase per option and process (``steps`` only when nothing
    else differs: the options explain it)."""
    first = options["0"]
    found = []
    for process, theirs in sorted(options.items(), key=lambda item: int(item[0])):
        for key in sorted(set(first) | set(theirs), key=lambda key: (key == _STEPS, key)):
            if first.get(key) != theirs.get(key) and not (key == _STEPS and found):
                found.append(f"{key} is {first.get(key)!r} on process 0 but {theirs.get(key)!r} on process {process}")
    return found


def _coordinate(addresses: list[str], options: dict[str, Any], shared: Mapping[str, Any], timeout_s: float
                ) -> dict[str, Any]:
    """Process 0: wait for every other process, compare, answer everyone."""
    deadline = time.monotonic() + timeout_s
    joined: dict[str, tuple[socket.socket, dict[str, Any]]] = {}
    try:
        with socket.create_server(_host_port(addresses[0])) as server:
            while len(joined) < len(addresses) - 1:
                server.settimeout(max(0.01, deadline - time.monotonic()))
                try:
                    conn, peer = server.accept()
                except TimeoutError:
                    missing = sorted(set(map(str, range(1, len(addresses)))) - set(joined), key=int)
                    raise FeatureStoreError(
                        f"process(es) {', '.join(missing)} of the cluster did not join process 0 at {addresses[0]} "
                        f"within {timeout_s:g} s; start every process (--process-id 0 to {len(addresses) - 1}) with "
                        f"the same command and addresses") from None
                message = _receive(conn, deadline, f"the process at {peer[0]}:{peer[1]}")
                process = str(message.get("process_id"))
                if process in joined or not process.isdigit() or not 0 < int(process) < len(addresses):
                    _send(conn, {"error": f"process id {process} is taken or not in 1..{len(addresses) - 1}"})
                    conn.close()
                    continue
                joined[process] = conn, message.get("options", {})
        differences = _differences({"0": options, **{p: theirs for p, (_, theirs) in joined.items()}})
        verdict: dict[str, Any] = {"shared": dict(shared)}
        if differences:
            verdict = {"error": f"the processes of the cluster were started with different options: "
                                f"{'; '.join(differences)}; start every process with the same command (only "
                                f"--process-id differs)"}
        for conn, _ in joined.values():
            _send(conn, verdict)
        for conn, _ in joined.values():  # the others close first: the port is free for Bytewax right away
            conn.settimeout(5)
            with contextlib.suppress(OSError):
                conn.recv(1)
    finally:
        for conn, _ in joined.values():
            conn.close()
    if "error" in verdict:
        raise FeatureStoreError(verdict["error"])
    return verdict["shared"]


def _report(process_id: int, addresses: list[str], options: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """Every other process: send the options to process 0, wait for its verdict."""
    deadline = time.monotonic() + timeout_s
    host, port = _host_port(addresses[0])
    while True:
        try:
            conn = socket.create_connection((host, port), timeout=max(0.01, deadline - time.monotonic()))
            break
        except OSError:
            if time.monotonic() + _POLL_S > deadline:
                raise FeatureStoreError(
                    f"process 0 of the cluster did not answer at {addresses[0]} within {timeout_s:g} s; start it "
                    f"(--process-id 0) with the same command and addresses") from None
            time.sleep(_POLL_S)
    with conn:
        _send(conn, {"process_id": process_id, "options": options})
        verdict = _receive(conn, deadline, f"process 0 at {addresses[0]}")
    if "error" in verdict:
        raise FeatureStoreError(verdict["error"])
    time.sleep(_STAGGER_S * process_id)
    return verdict["shared"]


def join(process_id: int | None, addresses: Sequence[str] | None, options: Mapping[str, Any], *,
         shared: Mapping[str, Any] | None = None, timeout_s: float = 120.0) -> dict[str, Any]:
    """Agree with the other processes of the cluster before running: return process 0's ``shared`` values, or
    raise ``FeatureStoreError`` naming every option that differs from process 0's (or the process missing).
    Not a cluster (neither ``process_id`` nor ``addresses``): ``shared`` as it is.

    ``options``: JSON values describing this process's run, everything but its process id; under ``steps``,
    the step ids of its flow. The installed featurestore and Bytewax versions are compared too.
    """
    if process_id is None and addresses is None:
        return dict(shared or {})
    if process_id is None or addresses is None:
        raise FeatureStoreError("a cluster run needs both the process id and the addresses of every process "
                                "(--process-id and --addresses, the same addresses on every process)")
    addresses = list(addresses)
    if not 0 <= process_id < len(addresses):
        raise FeatureStoreError(f"--process-id {process_id} is not an index of the {len(addresses)} addresses "
                                f"(0 to {len(addresses) - 1})")
    versions = {"featurestore": version("featurestore"), "bytewax": version("bytewax")}
    plain = json.loads(json.dumps({**options, **versions}))  # what the others receive: tuples become lists
    if process_id == 0:
        return _coordinate(addresses, plain, shared or {}, timeout_s)
    return _report(process_id, addresses, plain, timeout_s)
