"""The operators' kernels, compiled with numba for the generated programs.

The kernels live in ``featurestore.operators`` as plain Python marked with ``@kernel`` (the definitions
must not pay for importing numba, and the foundation must not import the engine). Here each marked
function of each operator module is numba-compiled, ``error_model="numpy"`` (IEEE division: x / 0.0 is
inf, not an exception), ``nogil=True``, ``cache=True`` (compiled code is kept on disk beside the module, or
under ``NUMBA_CACHE_DIR``).

A kernel calls other kernels by their module-level names (``diff_step`` calls ``shift_step``), so each
compiled kernel is a copy of the original function bound to a copy of its module's globals in which every
marked function is replaced by its compiled version: numba then sees compiled callees, and the operator
modules themselves are left untouched (their kernels still run as plain Python in their doctests).

``namespace()`` gives the globals of a generated program: ``math``, ``np`` and every kernel the operators'
``step`` or ``code`` call, by name.

>>> names = namespace()
>>> names["shift_step"], names["cmp_eq"](float("nan"), float("nan"))  # doctest: +ELLIPSIS
(CPUDispatcher(<function shift_step at 0x...>), 1.0)
"""

from __future__ import annotations

import functools
import math
import types
from typing import Any

import numba
import numpy as np

from featurestore.operators import MODULES, OPERATORS
from featurestore.operators.base import is_kernel

__all__ = ["OPTIONS", "namespace"]

#: How every kernel is compiled: IEEE semantics (no fast-math), released GIL, cached on disk.
OPTIONS = {"error_model": "numpy", "nogil": True, "cache": True}


@functools.cache
def namespace() -> dict[str, Any]:
    """Globals for a generated program: ``math``, ``np`` and the kernels its lines call (compiled)."""
    compiled = _compile_kernels()
    names: dict[str, Any] = {"math": math, "np": np}
    for op in OPERATORS.values():
        for function in (op.step, *op.kernels):
            if function is None:
                continue
            if names.setdefault(function.__name__, compiled[function]) is not compiled[function]:
                raise RuntimeError(f"two kernels are named {function.__name__!r}: generated programs call them by name")
    return names


def _compile_kernels() -> dict[Any, Any]:
    """Original kernel -> compiled copy, for every marked function of every operator module."""
    module_globals = {module: dict(vars(module)) for module in MODULES}
    compiled = {}
    for module, copy in module_globals.items():
        for value in vars(module).values():
            if is_kernel(value) and value.__module__ == module.__name__:
                function = types.FunctionType(value.__code__, copy, value.__name__, value.__defaults__,
                                              value.__closure__)
                compiled[value] = numba.njit(**OPTIONS)(function)
    for copy in module_globals.values():
        copy.update({name: compiled[value] for name, value in copy.items() if is_kernel(value)})
    return compiled
