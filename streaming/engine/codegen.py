"""Compile a feature view's expression trees into one straight-line step function.

Every distinct node of the view's trees becomes one or a few lines of Python operating on
``(value, valid)`` pairs, in dependency order, derived from the operator table
(``featurestore.operators``): a stateful operator's line calls its ``step`` kernel on its own slice of
the symbol's state vector (``size(params)`` slots from ``offset``), an elementwise operator's lines are its
``code``. Shared sub-expressions (the same ``ret_1`` under several features) are computed once; a
sub-expression that reads no column is the constant polars evaluates (``featurestore.expressions.constant``).
The generated source is numba-compiled as a whole (``streaming.engine.engine``).

>>> import polars as pl
>>> from featurestore.definitions import FeatureView
>>> program = generate(FeatureView("demo", "1h", {"mom": pl.col("close").shift(2) / pl.col("close")}))
>>> program.state_size
6
>>> print(program.source.splitlines()[2])
    v1, m1 = shift_step(S, 0, v0, m0, 2)
"""

from __future__ import annotations

from dataclasses import dataclass

from featurestore.definitions import FeatureView
from featurestore.expressions import Node, columns, constant
from featurestore.operators import OPERATORS
from featurestore.operators.base import Arg, Emit
from featurestore.timeframes import timeframe_ms

__all__ = ["Program", "generate"]


@dataclass(frozen=True)
class Program:
    """Generated source of ``step(S, ts, open, high, low, close, volume, out, outv)`` (one bar) and
    ``run(S, TS, O, H, L, C, V, OUT, OUTV)`` (a batch), and the state vector's size."""

    source: str
    state_size: int
    feature_names: tuple[str, ...]


class _Builder:
    def __init__(self, step_ms: int) -> None:
        self.step_ms = step_ms
        self.lines: list[str] = []
        self.args: dict[Node, Arg] = {}
        self.offset = 0

    def emit(self, node: Node) -> Arg:
        """Emit ``node`` (once) and its inputs; return how later lines refer to its value."""
        if node in self.args:
            return self.args[node]
        if node.inputs and not columns(node):  # a constant: polars evaluates it once, on one row
            arg = self.args[node] = self.emit(Node("lit", params=(("value", constant(node)[0]),)))
            return arg
        args = tuple(self.emit(child) for child in node.inputs)
        name = f"{len(set(self.args.values()))}"
        op, params = OPERATORS[node.op], dict(node.params)
        value, valid = f"v{name}", f"m{name}"
        if op.step is not None:
            call = "".join(f", {params[p]!r}" for p in op.params)
            lines = [f"{value}, {valid} = {op.step.__name__}(S, {self.offset}, {args[0].value}, {args[0].valid}{call})"]
            self.offset += op.size(params)
        else:
            lines = op.code(Emit(value, valid, args, params, self.step_ms))
        self.lines.extend(f"    {line}" for line in lines)
        literal = node.op == "lit"
        arg = self.args[node] = Arg(value, valid, literal, node.param("value") if literal else None)
        return arg


def generate(view: FeatureView) -> Program:
    """The straight-line step function of ``view`` (see the module docstring)."""
    builder = _Builder(timeframe_ms(view.timeframe))
    outputs = [builder.emit(node) for node in view.nodes.values()]
    step_out = [f"    out[{k}], outv[{k}] = float({arg.value}), {arg.valid}" for k, arg in enumerate(outputs)]
    run_out = [f"        OUT[i, {k}], OUTV[i, {k}] = float({arg.value}), {arg.valid}" for k, arg in enumerate(outputs)]
    # run() repeats the body inside its loop rather than calling step(): about 1.7x faster per bar
    source = "\n".join([
        "def step(S, ts, open, high, low, close, volume, out, outv):", *builder.lines, *step_out, "    return 0", "",
        "def run(S, TS, O, H, L, C, V, OUT, OUTV):",
        "    for i in range(TS.shape[0]):",
        "        ts, open, high, low, close, volume = TS[i], O[i], H[i], L[i], C[i], V[i]",
        *(f"    {line}" for line in builder.lines), *run_out, "    return 0", ""])
    return Program(source, builder.offset, tuple(view.nodes))
