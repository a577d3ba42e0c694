"""Incremental operators, one module per operation, all with the same shape.

Every stateful operation keeps its state in a slice ``S[off:off + size]`` of one float64 vector
per symbol (small, picklable, copied cheaply for snapshots) and exposes:

- ``size(params) -> int``: how many slots its state needs;
- ``step(S, off, x, valid, *params) -> (value, valid)``: consume one value (``valid=False`` is a
  null) and return the operation's output for it, exactly as polars computes it.

The ``step`` functions are numba-compiled with IEEE semantics (``error_model="numpy"``, no
fast-math), so the same recurrence serves one bar at a time and whole batches.
"""

from __future__ import annotations

import numba

__all__ = ["kernel"]

#: Decorator for every engine kernel: compiled, IEEE division, no fast-math, cached on disk.
kernel = numba.njit(cache=True, error_model="numpy", nogil=True)
