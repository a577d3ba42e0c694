"""What every operator declares (``Operator``), the ``@kernel`` marker, and the vocabulary the declarations share.

An operator is one operation of a feature expression. It is declared once, in the module of its family,
and everything else is derived from the declaration:

- the parser (``featurestore.expressions``) finds it by its serialized polars name (``polars``), reads its
  parameters (``parse``) and checks the kinds of its inputs (``typing``): what the table does not declare is
  refused when a view is defined;
- the renderer writes it back (``infix``, ``render`` or the call form ``name(inputs, param=value)``);
- the code generator (``streaming.engine.codegen``) calls a stateful operator's ``step`` on a slice of the
  symbol's state vector, ``size(params)`` slots long, or pastes an elementwise operator's ``code``.

Kernels (``step`` and the helpers ``code`` calls) are plain Python marked with ``@kernel``. Importing the
definitions costs no numba: ``streaming.engine`` compiles every marked function of the operator modules when
it builds a program. The same functions run unchanged here, which is what the doctests of the operator
modules do (``replay`` feeds one value at a time, as the engine does; plain Python raises on a division by
zero where the compiled kernel gives inf or NaN):

>>> from featurestore.operators import OPERATORS
>>> replay(OPERATORS["cum_sum"], [1.0, None, 2.5])
[1.0, None, 3.5]

Value kinds. Polars types every node; the engine computes every value as a float64 (booleans as 1.0/0.0). The
two agree exactly when each operation sees the values it would see after a cast to Float64, so each operator
declares which kinds its inputs may have (``typing``) and refuses the rest, naming the fix:

- ``Float64``: the bar columns and float literals;
- ``integer``: ``dt.*`` values (Int8) and integer literals. Polars computes ``+ - * // % pow abs neg`` on two
  integers in the integer type, which wraps on overflow (``dt.hour() * 100`` is Int8): refused, cast first;
- ``Boolean``: comparisons and predicates; polars refuses most arithmetic on them, so the engine does too;
- ``Float32``: polars computes Float32 in 32 bits, the engine in 64: only a cast or the feature's own value;
- ``Null``: ``pl.lit(None)``; ``Datetime``: ``ts``/``close_ts``, usable through ``dt.*`` only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from featurestore.errors import DefinitionError, LookAheadError, UnsupportedExpressionError

__all__ = [
    "BOOL",
    "FLOAT",
    "FLOAT32",
    "INT",
    "NULL",
    "TIME",
    "Arg",
    "Emit",
    "Expression",
    "Operator",
    "arithmetic",
    "comparison",
    "float_math",
    "is_kernel",
    "kernel",
    "literal_int",
    "logical",
    "replay",
    "require",
    "selecting",
    "template",
    "window_params",
]

FLOAT, FLOAT32, INT, BOOL, NULL, TIME = "Float64", "Float32", "integer", "Boolean", "Null", "Datetime"
_KERNEL = "__featurestore_kernel__"


def kernel(function: Callable) -> Callable:
    """Mark ``function`` as an engine kernel: plain Python here, compiled by ``streaming.engine`` with numba
    (IEEE semantics: ``error_model="numpy"``, no fast-math). A kernel calls other kernels by their module-level
    names and uses ``math`` only, so that both worlds run it."""
    setattr(function, _KERNEL, True)
    return function


def is_kernel(value: object) -> bool:
    return callable(value) and getattr(value, _KERNEL, False) is True


class Expression(NamedTuple):
    """A polars input where an operator wants a literal parameter (``shift(pl.col("n"))``)."""

    description: str


class Arg(NamedTuple):
    """One input of a node, as the code generator names it."""

    value: str  # variable holding the input's value (a float)
    valid: str  # variable holding its validity (False: null)
    literal: bool  # the input is a literal: polars treats it as a scalar
    constant: Any  # the literal's value (None for a non-literal or a null literal)


class Emit(NamedTuple):
    """What an elementwise operator's ``code`` gets: the names to assign, its inputs and parameters."""

    value: str
    valid: str
    args: tuple[Arg, ...]
    params: Mapping[str, Any]
    step_ms: int  # the view's bar length (close_ts = ts + step_ms)


def _no_params(options: Any, *literals: Any) -> dict[str, Any]:
    return {}


def _stateless(params: Mapping[str, Any]) -> int:
    return 0


@dataclass(frozen=True)
class Operator:
    """One operation of a feature expression, declared once (see the module docstring)."""

    name: str  # the Node's op, and the name ``render`` writes
    polars: tuple[str, ...]  # serialized polars names parsed into it ("Log1p", "RollingExpr.Mean", "Gt", ...)
    typing: Callable[[str, tuple[str, ...], Mapping[str, Any]], str]  # (shown name, input kinds, params) -> kind
    params: tuple[str, ...] = ()  # parameter names, in call order (``step``'s trailing arguments)
    arguments: int | None = 1  # expression inputs (None: one or more); further polars inputs are literal params
    parse: Callable[..., dict[str, Any]] = _no_params  # (polars options, *literal params) -> {param: value}
    size: Callable[[Mapping[str, Any]], int] = _stateless  # state slots, from the params (0: elementwise)
    step: Callable | None = None  # stateful: step(S, off, x, valid, *params) -> (value, valid)
    code: Callable[[Emit], list[str]] | None = None  # elementwise: lines assigning ``value, valid``
    kernels: tuple[Callable, ...] = ()  # kernels ``code`` calls by name
    infix: str = ""  # render as "(a <infix> b)"
    render: str = ""  # render template over the inputs ({0}, {1}...) and params ({name}...)
    label: str = ""  # how the operation is listed in SUPPORTED when it differs from ``name`` ("dt.hour")
    write: Callable[..., Any] | None = None  # the polars expression, from input expressions and **params

    @property
    def shown(self) -> str:
        """The name error messages use."""
        return f"{self.label or self.name} ({self.infix})" if self.infix else self.label or self.name


def replay(op: Operator, values: Sequence[float | None], **params: Any) -> list[float | None]:
    """Run a stateful operator's ``step`` in plain Python over ``values`` (None is a null), as the engine does
    one bar at a time."""
    state = [0.0] * op.size(params)
    out = []
    for x in values:
        value, valid = op.step(state, 0, 0.0 if x is None else x, x is not None, *(params[p] for p in op.params))
        out.append(value if valid else None)
    return out


def template(source: str) -> Callable[[Emit], list[str]]:
    """An elementwise ``code`` from one line of Python giving ``value, valid``.

    Placeholders: ``{a}``, ``{b}``, ``{c}`` the inputs' values, ``{am}``, ``{bm}``, ``{cm}`` their validity,
    ``{valid}`` all inputs valid, and the params by name.

    >>> code = template("{a} + {b}, {valid}")
    >>> code(Emit("v2", "m2", (Arg("v0", "m0", False, None), Arg("v1", "m1", True, 1.5)), {}, 60_000))
    ['v2, m2 = v0 + v1, m0 and m1']
    """

    def code(emit: Emit) -> list[str]:
        names = {"valid": " and ".join(arg.valid for arg in emit.args) or "True", **emit.params}
        for letter, arg in zip("abc", emit.args, strict=False):
            names[letter], names[f"{letter}m"] = arg.value, arg.valid
        return [f"{emit.value}, {emit.valid} = {source.format(**names)}"]

    return code


# -- parameters -------------------------------------------------------------------------------------------


def literal_int(value: Any, what: str) -> int:
    """``value`` as a literal integer parameter, or a refusal naming ``what`` ("shift(n)")."""
    if isinstance(value, Expression):
        raise UnsupportedExpressionError(f"{what} needs a literal integer, got an expression ({value.description})")
    if not isinstance(value, int) or isinstance(value, bool):
        raise UnsupportedExpressionError(f"{what} needs a literal integer, got {value!r}")
    return value


def window_params(name: str, options: Mapping[str, Any], *, ddof: bool = False) -> dict[str, Any]:
    """The parameters of a fixed-window ``rolling_*`` from polars' options, or a refusal.

    Windows end at the current row (``center=True`` reads ahead); ``min_samples`` counts non-null values and
    must lie in ``1..window_size`` (polars itself refuses ``min_samples > window_size`` when it runs)."""
    settings = options["options"]
    if settings["center"]:
        raise LookAheadError(f"{name}(center=True) is a centred window: it reads half a window ahead")
    if settings["weights"] is not None:
        raise UnsupportedExpressionError(
            f"unsupported operation {name}(weights=...) in a feature expression; weight the values before the "
            f"window instead")
    window, min_samples = settings["window_size"], settings["min_periods"]
    if not isinstance(window, int) or window < 1:
        raise UnsupportedExpressionError(f"{name}(window_size={window!r}) is not supported: use window_size >= 1")
    if not isinstance(min_samples, int) or min_samples > window:
        raise DefinitionError(f"{name} needs min_samples <= window_size ({window}), got {min_samples!r}")
    if min_samples < 1:
        raise UnsupportedExpressionError(
            f"{name}(min_samples={min_samples}) is not supported (polars sums an all-null window to 0.0 then): "
            f"use min_samples >= 1")
    params = {"window_size": window, "min_samples": min_samples}
    if ddof:
        params["ddof"] = (settings["fn_params"] or {}).get("Var", {}).get("ddof", 1)
    return params


# -- kinds ------------------------------------------------------------------------------------------------

_A = {FLOAT: "a Float64 value", FLOAT32: "a Float32 value", INT: "an integer", BOOL: "a boolean", NULL: "null",
      TIME: "a timestamp"}
_NUMERIC = {FLOAT, INT}


def _refuse(name: str, kind: str, why: str) -> UnsupportedExpressionError:
    return UnsupportedExpressionError(f"{name} of {_A.get(kind, kind)}: {why}")


def require(name: str, kinds: Sequence[str], allowed: set[str]) -> None:
    """Refuse any input kind outside ``allowed``, saying what to write instead."""
    for kind in kinds:
        if kind in allowed:
            continue
        if kind == FLOAT32:
            raise _refuse(name, kind, "polars computes Float32 in 32 bits, the engine in 64; "
                                      "cast back first with .cast(pl.Float64)")
        if kind == BOOL:
            raise _refuse(name, kind, "cast it first, e.g. (a > b).cast(pl.Float64)")
        if kind == NULL:
            raise _refuse(name, kind, "a null literal has no type here; use a number, or when/then/otherwise")
        if kind == TIME:
            raise _refuse(name, kind, "use ts and close_ts through dt.hour(), dt.weekday(), ... only")
        cast = "; cast first, e.g. .cast(pl.Float64)" if kind == INT else ""
        raise _refuse(name, kind, f"it needs {' or '.join(sorted(_A[k] for k in allowed))}{cast}")


def float_math(name: str, kinds: tuple[str, ...], params: Mapping[str, Any]) -> str:
    """Numbers in, Float64 out: polars casts integers to Float64 first (log, sqrt, truediv, rolling_mean...)."""
    require(name, kinds, _NUMERIC | ({NULL} if len(kinds) > 1 and FLOAT in kinds else set()))
    return FLOAT


def arithmetic(name: str, kinds: tuple[str, ...], params: Mapping[str, Any]) -> str:
    """Numbers in, their common type out: Float64 if any input is, else integer arithmetic, which polars
    computes in the integer type (wrapping on overflow, null on division by zero): refused."""
    require(name, kinds, _NUMERIC | ({NULL} if len(kinds) > 1 and FLOAT in kinds else set()))
    if FLOAT not in kinds:
        raise _refuse(name, INT, "polars keeps the integer type and wraps on overflow (dt.hour() is Int8); "
                                 "cast to Float64 first, e.g. pl.col('close_ts').dt.hour().cast(pl.Float64)")
    return FLOAT


def selecting(name: str, kinds: tuple[str, ...], params: Mapping[str, Any]) -> str:
    """Values passed through unchanged (shift, fill_null, max_horizontal, rolling_min...): their common type.
    Integers and booleans keep their values exactly in a float64."""
    require(name, kinds, {FLOAT, INT, BOOL, NULL})
    typed = set(kinds) - {NULL}
    if not typed:
        if len(kinds) == 1:
            raise _refuse(name, NULL, "a null literal has no type here; use a number, or when/then/otherwise")
        return NULL
    if len(typed) == 1:
        return typed.pop()
    return FLOAT if FLOAT in typed else INT


def comparison(name: str, kinds: tuple[str, ...], params: Mapping[str, Any]) -> str:
    require(name, kinds, {FLOAT, INT, BOOL, NULL})
    if set(kinds) == {NULL}:
        raise _refuse(name, NULL, "compare a value with null through is_null() instead")
    return BOOL


def logical(name: str, kinds: tuple[str, ...], params: Mapping[str, Any]) -> str:
    """Booleans only (Kleene logic with nulls): polars computes ``&``/``|``/``^``/``~`` bitwise on numbers."""
    for kind in kinds:
        if kind not in (BOOL, NULL):
            raise _refuse(name, kind, "it needs booleans; compare first, e.g. (a > b) & (c > 0)")
    if set(kinds) == {NULL}:
        raise _refuse(name, NULL, "it needs at least one boolean")
    return BOOL
