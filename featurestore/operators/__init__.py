"""The operator table: every operation a feature expression may use, declared once.

Each module declares the operators of one family (``OPERATORS``, a tuple of ``base.Operator``): its name,
the serialized polars names it is parsed from, its parameters in call order, how its input kinds combine,
its state size and ``step`` kernel (stateful operators) or its ``code`` (elementwise operators), and how it
is written back. ``featurestore.expressions`` derives the parser, the supported set and the renderer from
this table, ``streaming.engine`` the code generator; nothing else lists operations.

>>> SUPPORTED[:5]
('abs', 'add', 'and', 'cast', 'ceil')
>>> sorted(STATEFUL)
['cum_sum', 'diff', 'ewm_mean', 'pct_change', 'rolling_max', 'rolling_mean', 'rolling_min', 'rolling_std', 'rolling_sum', 'rolling_var', 'shift']
>>> OPERATORS["rolling_mean"].params, OPERATORS["rolling_mean"].size({"window_size": 20, "min_samples": 20})
(('window_size', 'min_samples'), 49)
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from featurestore.operators import (
    arithmetic,
    comparison,
    conditional,
    cum_sum,
    ewm_mean,
    functions,
    lag,
    logic,
    predicates,
    rolling_extreme,
    rolling_sum,
    rolling_var,
    source,
    temporal,
)
from featurestore.operators.base import Operator, replay

__all__ = ["BY_POLARS", "MODULES", "OPERATORS", "STATEFUL", "SUPPORTED", "Operator", "replay"]

#: The operator modules, one per family.
MODULES = (source, arithmetic, comparison, logic, functions, predicates, conditional, temporal,
           lag, rolling_sum, rolling_var, rolling_extreme, ewm_mean, cum_sum)


def _table() -> tuple[dict[str, Operator], dict[str, Operator]]:
    by_name: dict[str, Operator] = {}
    by_polars: dict[str, Operator] = {}
    for module in MODULES:
        for op in module.OPERATORS:
            if by_name.setdefault(op.name, op) is not op:
                raise RuntimeError(f"operator {op.name!r} is declared twice")
            for key in op.polars:
                if by_polars.setdefault(key, op) is not op:
                    raise RuntimeError(f"polars name {key!r} is claimed by {by_polars[key].name} and {op.name}")
    return by_name, by_polars


_BY_NAME, _BY_POLARS = _table()
#: Every operator, by name (the ``op`` of a ``Node``).
OPERATORS: Mapping[str, Operator] = MappingProxyType(_BY_NAME)
#: Every operator, by the serialized polars name it is parsed from.
BY_POLARS: Mapping[str, Operator] = MappingProxyType(_BY_POLARS)
#: Every operation a feature expression may use, as written in polars.
SUPPORTED = tuple(sorted(op.label or op.name for op in OPERATORS.values()))
#: Operations that carry state from bar to bar (everything else is elementwise on the current bar).
STATEFUL = frozenset(op.name for op in OPERATORS.values() if op.step is not None)
