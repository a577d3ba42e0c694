"""Feature expressions as an explicit tree: parse a ``pl.Expr``, refuse what cannot run causally.

A feature is written as a plain polars expression over one symbol's bars sorted by ``ts``. Polars
serializes an expression to a JSON tree; ``parse`` turns that tree into ``Node``s with one operation
each, every one an operator of the table in ``featurestore.operators`` (``SUPPORTED``), with inputs of the
kinds it accepts. The same ``Node`` tree is what the incremental engine runs, so an operation is either
supported in both places or refused when the feature is defined: never approximated.

A sub-expression that reads no column (``pl.lit(2.0).sqrt()``) is a constant: polars evaluates it once, as
a one-row column, and broadcasts the result; ``constant`` does the same, and the engine uses that value.

>>> import polars as pl
>>> node = parse((pl.col("close") / pl.col("close").shift(3)).log())
>>> node.op, [child.op for child in node.inputs], node.params
('log', ['truediv'], (('base', 2.718281828459045),))
>>> sorted(columns(node))
['close']
>>> render(parse(pl.col("close") * (pl.lit(2.0).sqrt() + 1)))
'(close * (sqrt(2.0) + 1))'
>>> parse(pl.col("close").shift(-1))
Traceback (most recent call last):
...
featurestore.errors.LookAheadError: shift(-1) reads 1 bar(s) ahead; use shift(n) with n >= 1
>>> parse(pl.rolling_corr(pl.col("close"), pl.col("open"), window_size=5))
Traceback (most recent call last):
...
featurestore.errors.UnsupportedExpressionError: unsupported operation rolling_corr in a feature expression; supported: abs, ...
"""

from __future__ import annotations

import io
import json
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import polars as pl

from featurestore.errors import DefinitionError, LookAheadError, UnsupportedExpressionError
from featurestore.operators import BY_POLARS, OPERATORS, STATEFUL, SUPPORTED
from featurestore.operators.base import BOOL, FLOAT, FLOAT32, INT, NULL, Expression
from featurestore.operators.source import (
    SOURCE_COLUMNS,
    TIME_COLUMNS,
    VALUE_COLUMNS,
    check_column,
    checked_value,
    literal_value,
)

__all__ = [
    "SOURCE_COLUMNS",
    "STATEFUL",
    "SUPPORTED",
    "VALUE_COLUMNS",
    "Node",
    "columns",
    "constant",
    "parse",
    "render",
    "to_polars",
    "walk",
]

_AGG = ("a whole-series aggregation (mean(), sum(), first(), ...) uses every row, including future bars; "
        "use a rolling_* or ewm_* operation instead")
# Operations that need future rows; refused with LookAheadError rather than "unsupported".
_FORWARD = {
    "Reverse": "reverse() reads the series backwards, so every row sees the future",
    "Interpolate": "interpolate() fills a null from the next known value",
    "InterpolateBy": "interpolate_by() fills a null from the next known value",
    "Sort": "sort() reorders rows by value, mixing past and future",
    "SortBy": "sort_by() reorders rows, mixing past and future",
    "ArgSort": "arg_sort() ranks rows by value, mixing past and future",
    "Rank": "rank() ranks a value among all rows, including future ones",
    "Random": "shuffle() and sample() mix rows from the whole series",
    "Boolean.IsUnique": "is_unique() compares a value with every row, including future ones",
    "Boolean.IsDuplicated": "is_duplicated() compares a value with every row, including future ones",
    "Boolean.IsLastDistinct": "is_last_distinct() looks for the value in future rows",
    "Agg": _AGG,
    **dict.fromkeys(("ArgMax", "ArgMin", "ArgUnique", "NullCount", "Mode", "Entropy", "Unique", "UniqueCounts",
                     "ValueCounts", "ApproxNUnique", "TopK", "BottomK", "SearchSorted", "IndexOf", "DropNulls",
                     "DropNans", "Explode", "Boolean.Any", "Boolean.All", "Boolean.HasNulls", "Hist"), _AGG),
}
# Serialized function groups whose option names the function ({"Boolean": "IsNan"}, {"StringExpr": {...}}).
_NAMESPACES = {"Boolean": "", "Pow": "", "Trigonometry": "", "TemporalExpr": "dt.", "StringExpr": "str.",
               "ListExpr": "list.", "ArrayExpr": "arr.", "StructExpr": "struct.", "BinaryExpr": "bin.",
               "Categorical": "cat.", "Bitwise": "bitwise_", "Range": "", "Business": ""}
_PASS_THROUGH = ("Alias", "KeepName", "RenameAlias")  # names change nothing: the feature is named by its key
_KINDS = {pl.Float64: FLOAT, pl.Float32: FLOAT32, pl.Boolean: BOOL, pl.Null: NULL}


@dataclass(frozen=True, eq=False)
class Node:
    """One operation of a feature expression: ``op`` applied to ``inputs`` with scalar ``params``.

    Two nodes are equal when they compute the same thing: parameters compare by type and value, so that
    ``0.0`` and ``-0.0`` (or ``1`` and ``1.0``) are different literals, as they are to polars.

    >>> Node("lit", params=(("value", 0.0),)) == Node("lit", params=(("value", -0.0),))
    False
    """

    op: str
    inputs: tuple[Node, ...] = ()
    params: tuple[tuple[str, Any], ...] = ()

    def param(self, name: str) -> Any:
        return dict(self.params)[name]

    @cached_property
    def _identity(self) -> tuple:
        return (self.op, tuple(child._identity for child in self.inputs),
                tuple((name, type(value).__name__, repr(value)) for name, value in self.params))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Node) and self._identity == other._identity

    def __hash__(self) -> int:
        return hash(self._identity)


def walk(node: Node) -> Iterator[Node]:
    """Every node of the tree, parents before children."""
    yield node
    for child in node.inputs:
        yield from walk(child)


def columns(node: Node) -> set[str]:
    """The source columns an expression reads."""
    return {n.param("name") for n in walk(node) if n.op == "col"}


def parse(expr: pl.Expr) -> Node:
    """Parse and check one feature expression; raise a ``DefinitionError`` subclass naming the problem."""
    if not isinstance(expr, pl.Expr):
        raise UnsupportedExpressionError(f"a feature must be a polars expression (pl.Expr), got {type(expr).__name__}")
    try:
        tree = json.loads(expr.meta.serialize(format="json"))
    except pl.exceptions.PolarsError as exc:
        raise UnsupportedExpressionError(f"the expression cannot be serialized, so it cannot be a feature: "
                                         f"{str(exc).splitlines()[0]}") from None
    try:
        _check_columns(tree)
        return _convert(tree)[0]
    except DefinitionError:
        raise
    except (KeyError, TypeError, IndexError, AttributeError, ValueError) as exc:  # a serialized shape not met before
        raise UnsupportedExpressionError(
            f"unsupported expression {str(expr)[:80]!r}: its serialized form has a shape this parser does not "
            f"know ({type(exc).__name__}: {exc}); supported: {', '.join(SUPPORTED)}") from exc


def _unsupported(what: str) -> UnsupportedExpressionError:
    return UnsupportedExpressionError(
        f"unsupported operation {what} in a feature expression; supported: {', '.join(SUPPORTED)}"
    )


_TEMPORAL = [name for name, op in OPERATORS.items() if op.label.startswith("dt.")]


def _check_columns(tree: Any, *, temporal_input: bool = False) -> None:
    """Every column must be a bar column, and a timestamp only the direct input of a ``dt.*`` function.
    Checked before anything else, so that a misspelt column is named as such."""
    if isinstance(tree, list):
        for item in tree:
            _check_columns(item)
    if not isinstance(tree, dict):
        return
    if list(tree) == ["Column"] and isinstance(tree["Column"], str):
        name = check_column(tree["Column"])
        if name in TIME_COLUMNS and not temporal_input:
            raise UnsupportedExpressionError(f"column {name!r} is a timestamp: use it through "
                                             f"{', '.join(OPERATORS[op].label + '()' for op in _TEMPORAL)} only")
        return
    if "Over" in tree or "Literal" in tree:  # .over() is refused whole; literals hold no columns
        return
    body = tree.get("Function")
    if isinstance(body, dict) and isinstance(body.get("function"), dict) and "TemporalExpr" in body["function"]:
        for position, child in enumerate(body.get("input", [])):
            _check_columns(child, temporal_input=position == 0)
        return
    for value in tree.values():
        _check_columns(value)


def _convert(tree: Any) -> tuple[Node, str, bool]:
    """(node, its kind, whether it reads a column)."""
    key, options, children = _entry(tree)
    op = BY_POLARS.get(key)
    if op is None:
        raise _refusal(key, options)
    count = len(children) if op.arguments is None else op.arguments
    if len(children) < max(count, 1 if op.arguments is None else 0):
        raise _unsupported(f"{op.name} with {len(children)} input(s)")
    inputs = [_convert(child) for child in children[:count]]
    params = op.parse(options, *(_argument(child) for child in children[count:]))
    node = Node(op.name, tuple(child[0] for child in inputs), tuple((name, params[name]) for name in op.params))
    if inputs and not any(child[2] for child in inputs):  # reads no column: polars' own value and type
        return node, _constant_kind(tree, node), False
    kind = op.typing(op.shown, tuple(child[1] for child in inputs), params)
    return node, kind, op.name == "col" or any(child[2] for child in inputs)


def _entry(tree: Any) -> tuple[str, Any, list]:
    """(polars name, options, inputs) of one serialized node; refuses what is not an operation."""
    if isinstance(tree, str):  # argument-less nodes: pl.len(), pl.element(), ...
        if tree == "Len":
            raise LookAheadError(_AGG.replace("(mean(), sum(), first(), ...)", "(pl.len())"))
        raise _unsupported(_describe(tree))
    (kind, body), = tree.items()
    if kind in ("Column", "Literal"):
        return kind, body, []
    if kind in _PASS_THROUGH:
        return _entry(body[0] if kind == "Alias" else body.get("expr", body) if isinstance(body, dict) else body)
    if kind == "BinaryExpr":
        return body["op"], None, [body["left"], body["right"]]
    if kind == "Ternary":
        return "Ternary", None, [body["predicate"], body["truthy"], body["falsy"]]
    if kind == "Cast":
        return "Cast", body, [body["expr"]]
    if kind == "Function":
        key, options = _function_key(body["function"])
        return key, options, list(body["input"])
    if kind == "Over":
        raise UnsupportedExpressionError(
            "don't write .over(...) in a feature: the project partitions every feature by symbol itself")
    if kind in _FORWARD:
        raise LookAheadError(_FORWARD[kind])
    raise _unsupported(_describe(kind))


def _function_key(function: Any) -> tuple[str, Any]:
    if isinstance(function, str):
        return function, None
    (name, options), = function.items()
    if name in ("RollingExpr", "RollingExprBy"):
        sub = options["function" if name == "RollingExpr" else "function_by"]
        return f"{name}.{sub if isinstance(sub, str) else next(iter(sub))}", options
    if name in _NAMESPACES and isinstance(options, str):
        return f"{name}.{options}", None
    if name in _NAMESPACES and isinstance(options, dict) and len(options) == 1:
        (sub, sub_options), = options.items()
        return f"{name}.{sub}", sub_options
    return name, options


def _argument(tree: Any) -> Any:
    """A literal parameter given as a polars input (``shift(n)``, ``log(base)``): its value, or an
    ``Expression`` naming what was given instead."""
    if isinstance(tree, dict) and list(tree) == ["Literal"]:
        return literal_value(tree["Literal"])
    try:
        key, options, _ = _entry(tree)
    except DefinitionError:
        return Expression("an expression")
    op = BY_POLARS.get(key)
    return Expression(op.name if op else _describe(key, options))


def to_polars(node: Node) -> pl.Expr:
    """The polars expression ``node`` stands for, written by the operators' ``write`` (``parse`` inverted).

    >>> to_polars(parse(pl.col("close").rolling_mean(3) - 1)).meta.eq(pl.col("close").rolling_mean(3) - 1)
    True
    """
    op = OPERATORS[node.op]
    return op.write(*(to_polars(child) for child in node.inputs), **dict(node.params))


def constant(node: Node) -> tuple[Any, str]:
    """(value, kind) of an expression that reads no column, evaluated as polars evaluates it inside a
    feature: once, on one row, the result broadcast to every bar (so ``pl.lit(1.0).cum_sum()`` is 1.0 and
    ``pl.lit(1.0).shift(1)`` null everywhere).

    >>> constant(parse(pl.lit(2.0).sqrt() * 3))
    (4.242640687119286, 'Float64')
    """
    return _evaluate(to_polars(node), render(node))


def _evaluate(expr: pl.Expr, shown: str) -> tuple[Any, str]:
    try:
        values = pl.select(expr.alias("constant")).to_series()
    except pl.exceptions.PolarsError as exc:
        raise UnsupportedExpressionError(
            f"polars cannot evaluate the constant {shown}: {str(exc).splitlines()[0]}") from None
    kind = _KINDS.get(values.dtype, INT if values.dtype.is_integer() else None)
    if kind is None or len(values) != 1:
        raise UnsupportedExpressionError(f"the constant {shown} is not a number ({values.dtype})")
    value = values[0]
    if kind == INT and value is not None:
        checked_value(value)
    return value, kind


def _constant_kind(tree: Any, node: Node) -> str:
    """The kind of a constant, once its value as written (``tree``) is the value the engine will use
    (``constant(node)``, rebuilt from the table): they differ only where a literal's dtype mattered."""
    written = _evaluate(pl.Expr.deserialize(io.StringIO(json.dumps(tree)), format="json"), render(node))
    rebuilt = constant(node)
    if _bits(written[0]) != _bits(rebuilt[0]):
        raise UnsupportedExpressionError(
            f"the constant {render(node)} depends on a literal's dtype (pl.lit(..., dtype=...)): it is "
            f"{written[0]!r} as written and {rebuilt[0]!r} with plain literals; write plain literals or compute it "
            f"in Python")
    return written[1]


def _bits(value: Any) -> bytes | None:
    """A value's float64 bit pattern (any NaN alike; None for null)."""
    return None if value is None else b"nan" if value != value else struct.pack("<d", float(value))


def _refusal(key: str, options: Any) -> DefinitionError:
    if key in _FORWARD:
        return LookAheadError(_FORWARD[key])
    if key == "FillNullWithStrategy" and isinstance(options, dict) and "Backward" in options:
        return LookAheadError("fill_null(strategy='backward') fills a null from the next bar")
    if key.startswith("Cum") and isinstance(options, dict) and options.get("reverse"):
        return LookAheadError(f"{_describe(key)}(reverse=True) accumulates from the last row back: it reads the future")
    return _unsupported(_describe(key, options))


_SPECIAL = {
    "ShiftAndFill": "shift(fill_value=...)",
    "AnonymousFunction": "map_batches/map_elements (a Python function)",
    "EqValidity": "eq_missing", "NotEqValidity": "ne_missing",
    "Selector": "a column selector (pl.all(), pl.col(a, b), cs.*)",
}


def _describe(key: str, options: Any = None) -> str:
    """How ``key`` is written in polars, for messages: ``RollingExpr.Quantile`` -> ``rolling_quantile``."""
    if key == "FillNullWithStrategy":
        strategy = next(iter(options)) if isinstance(options, dict) else options
        return f"fill_null(strategy={str(strategy).lower()!r})"
    if key == "RollingExpr.CorrCov":
        return "rolling_corr" if options["function"]["CorrCov"].get("is_corr") else "rolling_cov"
    if key in _SPECIAL:
        return _SPECIAL[key]
    group, _, name = key.rpartition(".")
    prefix = {"RollingExpr": "rolling_", "RollingExprBy": "rolling_", **_NAMESPACES}.get(group, "")
    if group in ("Pow", "Trigonometry"):
        return name.lower()
    return prefix + re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


def render(node: Node) -> str:
    """A compact, complete text form of an expression (polars' own repr hides window parameters).

    >>> import polars as pl
    >>> render(parse(pl.col("close").ewm_mean(span=3, adjust=False) / pl.col("close").shift(1) - 1))
    '((ewm_mean(close, alpha=0.5, adjust=False, min_samples=1) / shift(close, n=1)) - 1)'
    """
    op = OPERATORS[node.op]
    args = [render(child) for child in node.inputs]
    if op.infix:
        return f"({args[0]} {op.infix} {args[1]})"
    if op.render:
        return op.render.format(*args, **dict(node.params))
    return f"{node.op}({', '.join(args + [f'{k}={v!r}' for k, v in node.params])})"
