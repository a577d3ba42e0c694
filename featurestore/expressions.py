"""Feature expressions as an explicit tree: parse a ``pl.Expr``, refuse what cannot run causally.

A feature is written as a plain polars expression over one symbol's bars sorted by ``ts``. Polars
serializes an expression to a JSON tree; ``parse`` turns that tree into ``Node``s with one operation
each and checks every node against the supported set (``SUPPORTED``). The same ``Node`` tree is
what the incremental engine runs, so an operation is either supported in both places or refused
when the feature is defined: never approximated.

>>> import polars as pl
>>> node = parse((pl.col("close") / pl.col("close").shift(3)).log())
>>> node.op, [child.op for child in node.inputs], node.params
('log', ['truediv'], (('base', 2.718281828459045),))
>>> sorted(columns(node))
['close']
>>> parse(pl.col("close").shift(-1))
Traceback (most recent call last):
...
featurestore.errors.LookAheadError: shift(-1) reads 1 bar(s) ahead; use shift(n) with n >= 1
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import polars as pl

from featurestore.errors import LookAheadError, SchemaError, UnsupportedExpressionError

__all__ = ["SOURCE_COLUMNS", "STATEFUL", "SUPPORTED", "Node", "columns", "parse", "render", "walk"]

VALUE_COLUMNS = ("open", "high", "low", "close", "volume")
TIME_COLUMNS = ("ts", "close_ts")
SOURCE_COLUMNS = (*TIME_COLUMNS, *VALUE_COLUMNS)

_BINARY = {
    "Plus": "add", "Minus": "sub", "Multiply": "mul", "TrueDivide": "truediv", "FloorDivide": "floordiv",
    "Modulus": "mod", "Eq": "eq", "NotEq": "neq", "Lt": "lt", "LtEq": "le", "Gt": "gt", "GtEq": "ge",
    "And": "and", "Or": "or", "Xor": "xor",
}
_UNARY = {
    "Log1p": "log1p", "Exp": "exp", "Abs": "abs", "Negate": "neg", "Sign": "sign",
    "Sqrt": "sqrt", "Sin": "sin", "Cos": "cos", "Tan": "tan", "Tanh": "tanh",
    "Not": "not", "IsNan": "is_nan", "IsNotNan": "is_not_nan", "IsNull": "is_null", "IsNotNull": "is_not_null",
    "IsFinite": "is_finite", "IsInfinite": "is_infinite",
}
_VARIADIC = {"Pow": "pow", "MaxHorizontal": "max_horizontal", "MinHorizontal": "min_horizontal",
             "FillNull": "fill_null", "Clip": "clip"}
_TEMPORAL = {"Hour": "hour", "Minute": "minute", "WeekDay": "weekday", "Day": "day", "Month": "month"}
_ROLLING = {"Mean": "rolling_mean", "Sum": "rolling_sum", "Std": "rolling_std", "Var": "rolling_var",
            "Min": "rolling_min", "Max": "rolling_max"}
_LAGGED = {"Shift": "shift", "Diff": "diff", "PctChange": "pct_change"}

#: Operations that carry state from bar to bar (everything else is elementwise on the current bar).
STATEFUL = frozenset({*_ROLLING.values(), *_LAGGED.values(), "ewm_mean", "cum_sum"})
#: Every operation a feature expression may use, by its polars name.
SUPPORTED = tuple(sorted({
    "col", "lit", "when/then/otherwise", "cast", "log", *_BINARY.values(), *_UNARY.values(),
    *_VARIADIC.values(), *(f"dt.{name}" for name in _TEMPORAL.values()), *STATEFUL,
}))
# Operations that need future rows; refused with LookAheadError rather than "unsupported".
_FORWARD = {
    "Reverse": "reverse() reads the series backwards, so every row sees the future",
    "Interpolate": "interpolate() fills a null from the next known value",
    "Sort": "sort() reorders rows by value, mixing past and future",
    "SortBy": "sort_by() reorders rows, mixing past and future",
    "Rank": "rank() ranks a value among all rows, including future ones",
    "Agg": "a whole-series aggregation (mean(), sum(), first(), ...) uses every row, including future bars; "
           "use a rolling_* or ewm_* operation instead",
}


@dataclass(frozen=True)
class Node:
    """One operation of a feature expression: ``op`` applied to ``inputs`` with scalar ``params``."""

    op: str
    inputs: tuple[Node, ...] = ()
    params: tuple[tuple[str, Any], ...] = ()

    def param(self, name: str) -> Any:
        return dict(self.params)[name]


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
    node = _convert(json.loads(expr.meta.serialize(format="json")))
    _check_columns(node)
    return node


def _unsupported(what: str) -> UnsupportedExpressionError:
    return UnsupportedExpressionError(
        f"unsupported operation {what} in a feature expression; supported: {', '.join(SUPPORTED)}"
    )


def _literal(body: dict) -> Any:
    (kind, payload), = body.items()
    if kind == "Dyn":
        (_, value), = payload.items()
    elif kind == "Scalar":
        (dtype, value), = payload.items()
        if dtype == "Null":
            return None
        if dtype == "String":
            raise _unsupported(f"string literal {value!r}")
    else:
        raise _unsupported(f"literal {body}")
    if value is None:
        # polars writes NaN and +/-inf float literals as JSON null: they cannot be recovered exactly.
        raise UnsupportedExpressionError(
            "a NaN or infinite literal cannot be represented in a feature definition; "
            "use a finite value or when/then/otherwise on is_nan()/is_finite()")
    return value


def _literal_int(node: Node, what: str) -> int:
    if node.op != "lit" or not isinstance(node.param("value"), int) or isinstance(node.param("value"), bool):
        raise UnsupportedExpressionError(f"{what} needs a literal integer, got an expression ({node.op})")
    return node.param("value")


def _convert(tree: dict | str) -> Node:
    if isinstance(tree, str):  # argument-less nodes: pl.len(), pl.element(), ...
        if tree == "Len":
            raise LookAheadError(_FORWARD["Agg"].replace("(mean(), sum(), first(), ...)", "(pl.len())"))
        raise _unsupported(tree)
    (kind, body), = tree.items()
    if kind == "Column":
        return Node("col", params=(("name", body),))
    if kind == "Literal":
        return Node("lit", params=(("value", _literal(body)),))
    if kind == "Alias":
        return _convert(body[0])
    if kind == "BinaryExpr":
        if body["op"] not in _BINARY:
            raise _unsupported(f"binary operator {body['op']}")
        return Node(_BINARY[body["op"]], (_convert(body["left"]), _convert(body["right"])))
    if kind == "Ternary":
        return Node("when", tuple(_convert(body[k]) for k in ("predicate", "truthy", "falsy")))
    if kind == "Cast":
        dtype = body["dtype"].get("Literal") if isinstance(body["dtype"], dict) else None
        if not isinstance(dtype, str) or not (dtype.startswith(("Float", "Int", "UInt")) or dtype == "Boolean"):
            raise _unsupported(f"cast to {body['dtype']}")
        return Node("cast", (_convert(body["expr"]),), (("dtype", dtype), ("strict", body["options"] == "Strict")))
    if kind == "Function":
        return _function(body["function"], tuple(_convert(child) for child in body["input"]))
    if kind == "Over":
        raise UnsupportedExpressionError(
            "don't write .over(...) in a feature: the project partitions every feature by symbol itself")
    if kind in _FORWARD:
        raise LookAheadError(_FORWARD[kind])
    raise _unsupported(kind)


def _function(function: str | dict, inputs: tuple[Node, ...]) -> Node:
    if isinstance(function, str):
        name, options = function, None
    else:
        (name, options), = function.items()
    if name in ("Pow", "Boolean", "Trigonometry") and isinstance(options, str):
        name, options = (options if options != "Generic" else "Pow"), None
    if name in _FORWARD:
        raise LookAheadError(_FORWARD[name])
    if name in _UNARY:
        return Node(_UNARY[name], inputs)
    if name == "Log":
        base = inputs[1]
        if base.op != "lit":
            raise UnsupportedExpressionError("log(base) needs a literal base")
        return Node("log", inputs[:1], (("base", float(base.param("value"))),))
    if name == "Clip":
        return Node("clip", inputs, (("has_min", options["has_min"]), ("has_max", options["has_max"])))
    if name in _VARIADIC:
        return Node(_VARIADIC[name], inputs)
    if name == "TemporalExpr" and options in _TEMPORAL:
        if inputs[0].op != "col" or inputs[0].param("name") not in TIME_COLUMNS:
            raise UnsupportedExpressionError(f"dt.{_TEMPORAL[options]}() applies to the columns {TIME_COLUMNS} only")
        return Node(_TEMPORAL[options], inputs)
    if name in _LAGGED:
        return _lagged(_LAGGED[name], options, inputs)
    if name == "RollingExpr":
        return _rolling(options, inputs)
    if name == "EwmMean":
        return _ewm(options["options"], inputs)
    if name == "CumSum":
        if options["reverse"]:
            raise LookAheadError("cum_sum(reverse=True) sums the future")
        return Node("cum_sum", inputs)
    if name == "FillNullWithStrategy" and isinstance(options, dict) and "Backward" in options:
        raise LookAheadError("fill_null(strategy='backward') fills a null from the next bar")
    raise _unsupported(name if options is None else f"{name} {json.dumps(options)}")


def _lagged(op: str, null_behavior: str | None, inputs: tuple[Node, ...]) -> Node:
    n = _literal_int(inputs[1], f"{op}(n)")
    if n < 0:
        raise LookAheadError(f"{op}({n}) reads {-n} bar(s) ahead; use {op}(n) with n >= 1")
    if n == 0 or null_behavior == "Drop":
        raise UnsupportedExpressionError(
            f"{op}({n}{', null_behavior=drop' if null_behavior == 'Drop' else ''}) is not a causal lag; use n >= 1")
    return Node(op, inputs[:1], (("n", n),))


def _rolling(options: dict, inputs: tuple[Node, ...]) -> Node:
    op = _ROLLING.get(options["function"])
    settings = options["options"]
    if op is None:
        raise _unsupported(f"rolling_{options['function'].lower()}")
    if settings["center"]:
        raise LookAheadError(f"{op}(center=True) is a centred window: it reads half a window ahead")
    if settings["weights"] is not None:
        raise _unsupported(f"{op}(weights=...)")
    ddof = (settings["fn_params"] or {}).get("Var", {}).get("ddof")
    params = (("window_size", settings["window_size"]), ("min_samples", settings["min_periods"]))
    return Node(op, inputs, (*params, ("ddof", ddof)) if op in ("rolling_std", "rolling_var") else params)


def _ewm(options: dict, inputs: tuple[Node, ...]) -> Node:
    if options["ignore_nulls"]:
        raise _unsupported("ewm_mean(ignore_nulls=True)")
    if not 0 < options["alpha"] <= 1 or not math.isfinite(options["alpha"]):
        raise UnsupportedExpressionError(f"ewm_mean needs 0 < alpha <= 1, got {options['alpha']}")
    return Node("ewm_mean", inputs, (("alpha", options["alpha"]), ("adjust", options["adjust"]),
                                     ("min_samples", options["min_periods"])))


def _check_columns(node: Node) -> None:
    if node.op == "col" and node.param("name") in TIME_COLUMNS:
        raise UnsupportedExpressionError(f"column {node.param('name')!r} is a timestamp: use it through "
                                         f"{', '.join('dt.' + t + '()' for t in _TEMPORAL.values())} only")
    for name in sorted(columns(node)):
        if name not in SOURCE_COLUMNS:
            close = difflib.get_close_matches(name, SOURCE_COLUMNS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise SchemaError(f"unknown column {name!r}: a feature reads the bar columns {SOURCE_COLUMNS}{hint}")
    for n in walk(node):
        if n.op not in _TEMPORAL.values():
            for child in n.inputs:
                if child.op == "col" and child.param("name") in TIME_COLUMNS:
                    raise UnsupportedExpressionError(
                        f"column {child.param('name')!r} is a timestamp: use it through "
                        f"{', '.join('dt.' + t + '()' for t in _TEMPORAL.values())} only")


_INFIX = {"add": "+", "sub": "-", "mul": "*", "truediv": "/", "floordiv": "//", "mod": "%", "eq": "==",
          "neq": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">=", "and": "&", "or": "|", "xor": "^"}


def render(node: Node) -> str:
    """A compact, complete text form of an expression (polars' own repr hides window parameters).

    >>> import polars as pl
    >>> render(parse(pl.col("close").ewm_mean(span=3, adjust=False) / pl.col("close").shift(1) - 1))
    '((ewm_mean(close, alpha=0.5, adjust=False, min_samples=1) / shift(close, n=1)) - 1)'
    """
    if node.op == "col":
        return node.param("name")
    if node.op == "lit":
        return repr(node.param("value"))
    args = [render(child) for child in node.inputs]
    if node.op in _INFIX:
        return f"({args[0]} {_INFIX[node.op]} {args[1]})"
    if node.op == "when":
        return f"when({args[0]}).then({args[1]}).otherwise({args[2]})"
    return f"{node.op}({', '.join(args + [f'{k}={v!r}' for k, v in node.params])})"
