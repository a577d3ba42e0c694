"""Execute a dataflow in this process: several worker threads, one process of a cluster, with recovery.

This is what ``python -m bytewax.run`` does, callable from Python (``featurestore stream`` uses it).
With ``recovery_dir`` Bytewax snapshots every ``snapshot_interval_s`` and a restart resumes from the
last snapshot. An empty recovery directory is initialised with one partition per worker; a cluster
of processes needs it initialised beforehand (``python -m bytewax.recovery DIR N``) so that no two
processes race to create it. The processes of a cluster should agree on their options first
(``streaming.cluster.join``): Bytewax itself waits forever for processes whose flows differ. When a
process of a running cluster dies, the others stop with an error naming the fix, not a Rust panic.

The objects alive when the flow starts (modules, definitions, the flow itself) are frozen out of Python's cyclic
garbage collector while it runs (``gc.freeze``): they are not garbage, and each full collection traversed them
again (0.3-0.5 s on a loaded 2-core machine, a few times a minute in a replay). They are unfrozen when it ends.

Typical use::

    run_flow(build_flow(config), workers=2, recovery_dir=Path("recovery"), snapshot_interval_s=10)
"""

from __future__ import annotations

import gc
from datetime import timedelta
from pathlib import Path

from bytewax.dataflow import Dataflow
from bytewax.errors import BytewaxRuntimeError
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.run import cli_main

from featurestore.errors import FeatureStoreError

__all__ = ["run_flow"]


def run_flow(flow: Dataflow, *, workers: int = 1, process_id: int | None = None, addresses: list[str] | None = None,
             recovery_dir: Path | None = None, snapshot_interval_s: float = 10.0,
             backup_interval_s: float = 0.0) -> None:
    """Run ``flow`` until its sources end (a live source: until interrupted).

    A ``FeatureStoreError`` raised inside the flow (no stored history, an unknown symbol...) is raised
    as itself, not wrapped in Bytewax's runtime error, so the CLI reports it as a user error.
    """
    if workers < 1 or snapshot_interval_s <= 0:
        raise FeatureStoreError(f"need workers >= 1 and snapshot interval > 0, got {workers} and {snapshot_interval_s}")
    if (process_id is None) != (addresses is None):
        raise FeatureStoreError("a cluster run needs both the process id and the addresses of every process")
    recovery = None
    if recovery_dir is not None:
        if not any(Path(recovery_dir).glob("part-*.sqlite3")):
            if addresses is not None:
                raise FeatureStoreError(f"recovery directory {recovery_dir} holds no partitions; initialise it once "
                                        f"for the cluster: python -m bytewax.recovery {recovery_dir} <partitions>")
            Path(recovery_dir).mkdir(parents=True, exist_ok=True)
            init_db_dir(Path(recovery_dir), workers)
        recovery = RecoveryConfig(Path(recovery_dir), timedelta(seconds=backup_interval_s))
    gc.freeze()
    try:
        cli_main(flow, workers_per_process=workers, process_id=process_id, addresses=addresses,
                 epoch_interval=timedelta(seconds=snapshot_interval_s), recovery_config=recovery)
    except BytewaxRuntimeError as exc:
        cause = exc.__cause__
        while cause is not None and not isinstance(cause, FeatureStoreError):
            cause = cause.__cause__
        if cause is None:
            raise
        raise cause from exc
    except BaseException as exc:
        if addresses is None or type(exc).__name__ != "PanicException":  # pyo3's, for a lost connection
            raise
        resume = (f"they resume from the last snapshot in {recovery_dir}" if recovery_dir is not None else
                  "without --recovery-dir the run starts over")
        raise FeatureStoreError(f"this process lost the cluster (Bytewax: {exc}): another process stopped or "
                                f"died; restart every process with the same command ({resume})") from None
    finally:
        gc.unfreeze()
