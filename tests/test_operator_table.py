"""The operator table (``featurestore.operators``): one declaration per operator, everything else derived.

1. Contract: every operator in the table has the shared shape (parameters, a state size from the params,
   a ``step`` kernel or elementwise ``code``, a polars spelling), round-trips polars -> Node -> polars and
   Node -> render -> Node, and each stateful kernel, run as plain Python, equals polars step by step.
2. Property: random polars expressions, built from a broad set of ``pl.Expr`` methods and ``pl`` functions
   (most of which the table does not know), nested a few levels over the bar columns. Defining a view only
   ever succeeds or raises a ``DefinitionError``; what succeeds, the engine streams bit for bit as the
   backfill computes it, one bar at a time and in random batches.
"""

from __future__ import annotations

import inspect
import itertools
import math
import re
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from featurestore.bars import TS_DTYPE
from featurestore.definitions import FeatureView
from featurestore.errors import DefinitionError
from featurestore.expressions import Node, parse, render, to_polars, walk
from featurestore.operators import BY_POLARS, MODULES, OPERATORS, STATEFUL, SUPPORTED, replay
from featurestore.operators.base import BOOL, FLOAT, TIME, is_kernel
from featurestore.operators.source import SOURCE_COLUMNS
from streaming.engine import ViewEngine

# ---------------------------------------------------------------------------------------------------------
# 1. Contract. Example nodes are built from the table itself: parameters from one sample per parameter name,
# inputs of the first kind the operator's typing accepts.

SAMPLE_PARAMS = {"n": 2, "window_size": 3, "min_samples": 2, "ddof": 1, "alpha": 0.5, "adjust": False,
                 "base": 10.0, "has_min": True, "has_max": True, "dtype": "Float32", "strict": True,
                 "name": "close", "value": 2.5}
SAMPLE_INPUTS = {FLOAT: [Node("col", params=(("name", name),)) for name in ("close", "open", "high")],
                 BOOL: [Node("gt", (Node("col", params=(("name", "close"),)), Node("col", params=(("name", "open"),))))],
                 TIME: [Node("col", params=(("name", "close_ts"),))]}


def _example(name: str) -> Node:
    op = OPERATORS[name]
    params = {p: SAMPLE_PARAMS[p] for p in op.params}
    if op.arguments is not None:
        count = op.arguments
    else:  # variadic: clip takes one bound per flag, the horizontal folds any number
        count = 1 + sum(bool(v) for v in params.values()) if params else 3
    for kinds in itertools.product((FLOAT, BOOL, TIME), repeat=count):
        try:
            op.typing(op.shown, kinds, params)
        except DefinitionError:
            continue
        inputs = tuple(SAMPLE_INPUTS[kind][k % len(SAMPLE_INPUTS[kind])] for k, kind in enumerate(kinds))
        return Node(name, inputs, tuple(params.items()))
    raise AssertionError(f"{name}: no combination of input kinds is accepted")


EXAMPLES = {name: _example(name) for name in OPERATORS}


def test_the_table_is_the_supported_set():
    assert set(SUPPORTED) == {op.label or op.name for op in OPERATORS.values()}
    assert {name for name, op in OPERATORS.items() if op.step is not None} == STATEFUL
    assert {key: op.name for key, op in BY_POLARS.items()} == {
        key: op.name for op in OPERATORS.values() for key in op.polars}
    declared = [op.name for module in MODULES for op in module.OPERATORS]
    assert sorted(declared) == sorted(OPERATORS), "an operator is declared twice or outside MODULES"


@pytest.mark.parametrize("name", sorted(OPERATORS))
def test_every_operator_has_the_shared_shape(name):
    op = OPERATORS[name]
    assert op.polars and all(isinstance(key, str) for key in op.polars)
    assert isinstance(op.params, tuple) and all(isinstance(p, str) for p in op.params)
    assert list(inspect.signature(op.size).parameters) == ["params"], "size(params) -> int, the same for all"
    size = op.size(dict(EXAMPLES[name].params))
    assert isinstance(size, int) and size >= 0
    assert callable(op.typing) and callable(op.parse) and callable(op.write)
    if op.step is not None:  # stateful: one input, step(S, off, x, valid, *params) on `size` slots
        assert size > 0 and op.code is None and op.arguments == 1 and is_kernel(op.step)
        assert list(inspect.signature(op.step).parameters)[:4] == ["S", "off", "x", "valid"]
        assert len(inspect.signature(op.step).parameters) == 4 + len(op.params)
    else:  # elementwise: no state, code lines for the generator
        assert size == 0 and callable(op.code)
    assert all(is_kernel(function) for function in op.kernels)


def test_kernel_names_are_unique_across_modules():
    """Generated programs call kernels by name: two different kernels may not share one."""
    named: dict[str, object] = {}
    for op in OPERATORS.values():
        for function in (op.step, *op.kernels):
            if function is not None:
                assert named.setdefault(function.__name__, function) is function, function.__name__


@pytest.mark.parametrize("name", sorted(OPERATORS))
def test_polars_round_trip(name):
    """Node -> polars (``write``) -> Node: the operator reads back what it writes."""
    node = EXAMPLES[name]
    assert parse(to_polars(node)) == node
    assert name in {n.op for n in walk(parse(to_polars(node)))}


_NUMBER = re.compile(r"(?<![\w.=])(-?\d+(?:\.\d+)?(?:e[-+]?\d+)?|None|True|False)(?![\w.])")


def _unrender(text: str) -> pl.Expr:
    """``render`` inverted with a namespace derived from the table: call forms are ``write``, infix forms
    Python's operators on ``pl.Expr``, bare names columns; positional numbers become ``pl.lit``."""
    namespace = {name: pl.col(name) for name in SOURCE_COLUMNS}
    namespace |= {name: op.write for name, op in OPERATORS.items() if not op.infix and not op.render}
    namespace |= {"when": pl.when, "lit": pl.lit, "not_": OPERATORS["not"].write}
    text = _NUMBER.sub(r"lit(\1)", text.replace("not(", "not_("))
    return eval(text, {"__builtins__": {}}, namespace)


@pytest.mark.parametrize("name", sorted(OPERATORS))
def test_render_round_trip(name):
    node, op = EXAMPLES[name], OPERATORS[name]
    text = render(node)
    if op.infix:
        assert f" {op.infix} " in text
    elif not op.render:
        assert text.startswith(f"{name}(") and all(f"{p}={v!r}" in text for p, v in node.params), text
    assert parse(_unrender(text)) == node, text


def test_distinct_examples_render_differently():
    texts = {render(node) for node in EXAMPLES.values()}
    assert len(texts) == len(EXAMPLES)


series = st.lists(st.one_of(st.none(), st.floats(-1e6, 1e6).filter(lambda x: x != 0.0),
                            st.sampled_from([math.inf, -math.inf, math.nan, 1e-300, 1e300])), min_size=1, max_size=25)


@pytest.mark.parametrize("name", sorted(STATEFUL))
@settings(max_examples=40, deadline=None)
@given(values=series)
def test_stateful_kernels_in_plain_python_equal_polars(name, values):
    """``replay`` (the kernel in plain Python, one value at a time) against polars, bit for bit."""
    node = EXAMPLES[name]
    want = pl.DataFrame({"close": pl.Series(values, dtype=pl.Float64)}).select(to_polars(node))
    got = replay(OPERATORS[name], values, **dict(node.params))
    _assert_bit_identical(want.to_series(), pl.Series(got, dtype=pl.Float64), name)


# ---------------------------------------------------------------------------------------------------------
# 2. Property: random polars expressions.

c, o, h, lo, v = (pl.col(name) for name in ("close", "open", "high", "low", "volume"))
ts, close_ts = pl.col("ts"), pl.col("close_ts")


def _build(function, *strategies):
    """Apply ``function`` to drawn arguments; what polars refuses to build leaves the first argument as is."""
    def apply(args):
        try:
            return function(*args)
        except Exception:  # polars' own argument checks (e.g. a negative window): not what is tested here
            return args[0]
    return st.tuples(*strategies).map(apply)


small = st.integers(-2, 5)
windows = st.integers(0, 6)
min_samples = st.sampled_from([None, None, None, 1, 2, 3, 0, 7])
alphas = st.sampled_from([0.05, 0.3, 0.5, 1.0])
numbers = st.one_of(st.sampled_from([0.0, -0.0, 1.0, -1.0, 0.5, 2.0, 3.0, 100.0, 1e-9]),
                    st.floats(-10, 10, allow_nan=False), st.integers(-5, 12))
special = st.sampled_from([math.nan, math.inf, None, True, False, 2**60])
casts = st.sampled_from([pl.Float64, pl.Float32, pl.Int64, pl.Int8, pl.UInt32, pl.Boolean, pl.String])
temporal = st.sampled_from(["hour", "minute", "weekday", "day", "month", "year", "epoch", "truncate"])


def _temporal(column: pl.Expr, field: str) -> pl.Expr:
    return {"epoch": lambda: column.dt.epoch("ms"), "truncate": lambda: column.dt.truncate("1d")}.get(
        field, lambda: getattr(column.dt, field)())()


columns = st.sampled_from([c, o, h, lo, v, c, c])
leaves = st.one_of(
    columns, columns, columns, columns,
    numbers.map(pl.lit),
    st.one_of(special, numbers).map(pl.lit),
    st.tuples(st.sampled_from([ts, close_ts]), temporal).map(lambda t: _temporal(*t)),
    st.sampled_from([ts, close_ts, pl.col("clsoe")]),
)

UNARY = ["abs", "__neg__", "__invert__", "log1p", "exp", "sqrt", "cbrt", "sin", "cos", "tan", "tanh", "arctan", "sign",
         "floor", "ceil", "is_nan", "is_not_nan", "is_finite", "is_infinite", "is_null", "is_not_null", "cum_sum",
         "cum_prod", "cum_max", "cum_count", "reverse", "rank", "sort", "mean", "sum", "max", "first", "std",
         "median", "forward_fill", "backward_fill", "interpolate", "drop_nulls", "unique", "is_unique",
         "is_first_distinct", "rle_id", "arg_max", "null_count", "hash", "mode", "implode", "peak_max"]
SUPPORTED_UNARY = ["abs", "__neg__", "log1p", "exp", "sqrt", "sin", "tanh", "sign", "floor", "is_nan", "is_null",
                   "cum_sum"]
BINARY = ["__add__", "__sub__", "__mul__", "__truediv__", "__floordiv__", "__mod__", "__pow__", "__eq__", "__ne__",
          "__lt__", "__le__", "__gt__", "__ge__", "__and__", "__or__", "__xor__"]


def _extend(children):
    rolling = st.sampled_from(["rolling_mean", "rolling_sum", "rolling_std", "rolling_var", "rolling_min",
                               "rolling_max", "rolling_median", "rolling_skew"])
    predicate = st.one_of(st.tuples(children, children).map(lambda t: t[0] > t[1]), children)
    supported = [
        _build(lambda x, m: getattr(x, m)(), children, st.sampled_from(SUPPORTED_UNARY)),
        _build(lambda a, b, m: getattr(a, m)(b), children, children, st.sampled_from(BINARY)),
        _build(lambda a, b, m: getattr(a, m)(b), children, numbers, st.sampled_from(BINARY[:7])),
        _build(lambda x, n, m: getattr(x, m)(n), children, small, st.sampled_from(["shift", "diff", "pct_change"])),
        _build(lambda x, w, ms, m, d: getattr(x, m)(w, min_samples=ms, **({"ddof": d} if "std" in m or "var" in m
                                                                           else {})),
               children, windows, min_samples, rolling, st.integers(0, 2)),
        _build(lambda x, a, adj, ms: x.ewm_mean(alpha=a, adjust=adj, min_samples=ms),
               children, alphas, st.booleans(), st.integers(0, 4)),
        _build(lambda p, t, f: pl.when(p).then(t).otherwise(f), predicate, children, children),
        _build(lambda x, y, z, m: getattr(pl, m)(x, y, z), children, children, children,
               st.sampled_from(["max_horizontal", "min_horizontal"])),
        _build(lambda x, lo_, hi_: x.clip(lo_, hi_), children, st.one_of(st.none(), numbers, children),
               st.one_of(st.none(), numbers)),
        _build(lambda x, y: x.fill_null(y), children, st.one_of(numbers, children)),
        _build(lambda x, t: x.cast(t), children, casts),
        _build(lambda x, b: x.log(b), children, st.sampled_from([math.e, 10, 2.0, 0.5])),
    ]
    others = [
        _build(lambda x, m: getattr(x, m)(), children, st.sampled_from(UNARY)),
        _build(lambda x, y, w: pl.rolling_corr(x, y, window_size=w), children, children, st.integers(2, 5)),
        _build(lambda x, s: x.ewm_std(span=s), children, st.integers(1, 5)),
        _build(lambda x, q: x.rolling_quantile(q, window_size=3), children, st.sampled_from([0.1, 0.5])),
        _build(lambda x, w: x.rolling_mean(w, center=True), children, st.integers(1, 4)),
        _build(lambda x, n: x.shift(n, fill_value=0.0), children, st.integers(1, 3)),
        _build(lambda x, y: x.fill_null(strategy=y), children, st.sampled_from(["forward", "backward", "zero"])),
        _build(lambda x: x.cast(pl.String).str.len_chars(), children),
        _build(lambda x: x.implode().list.len(), children),
        _build(lambda x: pl.struct(x).struct.field("close"), children),
        _build(lambda x: x.over("symbol"), children),
        _build(lambda x, y: x.is_between(y, 2.0), children, children),
        _build(lambda x, y: pl.sum_horizontal(x, y), children, children),
        _build(lambda x, y: pl.coalesce(x, y), children, children),
        _build(lambda x, d: x.round(d), children, st.integers(0, 2)),
        _build(lambda x: x.head(3), children),
        _build(lambda x: x.map_batches(lambda s: s), children),
        _build(lambda x: pl.len() + x, children),
    ]
    supported_op, other_op = st.one_of(*supported), st.one_of(*others)
    return st.integers(0, 9).flatmap(lambda k: supported_op if k < 8 else other_op)  # mostly the table's


expressions = st.recursive(leaves, _extend, max_leaves=6)
values = st.one_of(st.sampled_from([0.0, -0.0, 1.0, -1.0, 0.5, 2.0, math.nan, math.inf, -math.inf, 1e300, -1e300,
                                    1e-300, 5e-324, 3.0]),
                   st.floats(allow_nan=False, allow_infinity=False, width=64), st.floats(-10, 10))


def _bars(columns: dict[str, list[float]]) -> pl.DataFrame:
    n = len(columns["close"])
    start = datetime(2024, 2, 28, 20, tzinfo=UTC)  # crosses a month end, a leap day and a weekend
    return pl.DataFrame({
        "symbol": ["X"] * n,
        "ts": pl.Series([start + timedelta(hours=i) for i in range(n)], dtype=TS_DTYPE),
        **{name: pl.Series(name, column, dtype=pl.Float64) for name, column in columns.items()},
    })


def _assert_bit_identical(want: pl.Series, have: pl.Series, name: str) -> None:
    assert want.is_null().to_list() == have.is_null().to_list(), f"{name}: nulls differ\n{want.to_list()}\n{have.to_list()}"
    a, b = want.drop_nulls().to_numpy(), have.drop_nulls().to_numpy()
    assert np.array_equal(np.isnan(a), np.isnan(b)), f"{name}: NaNs differ\n{want.to_list()}\n{have.to_list()}"
    finite = ~np.isnan(a)
    assert np.array_equal(a[finite].view(np.int64), b[finite].view(np.int64)), (
        f"{name}: values differ\nexpected {want.to_list()}\ngot      {have.to_list()}")


def _defined(expr: pl.Expr) -> FeatureView | None:
    """The one-feature view of ``expr``, or None if it is refused, which must be a DefinitionError."""
    try:
        return FeatureView("prop", "1h", {"f": expr})
    except DefinitionError:
        return None


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                                 HealthCheck.filter_too_much])
@given(data=st.data(), exprs=st.lists(expressions, min_size=1, max_size=6))
def test_random_expressions_are_refused_or_stream_bit_identically(data, exprs):
    accepted = {f"f{k}": expr for k, expr in enumerate(exprs) if _defined(expr) is not None}
    assume(accepted)
    view = FeatureView("prop", "1h", accepted)
    n = data.draw(st.integers(2, 30), label="n")
    columns = {name: data.draw(st.lists(values, min_size=n, max_size=n), label=name)
               for name in ("open", "high", "low", "close")}
    columns["volume"] = data.draw(st.lists(st.floats(0, 1), min_size=n, max_size=n), label="volume")
    bars = _bars(columns)
    expected = view.compute_symbol(bars).select(view.feature_names)  # what succeeds must also backfill
    engine = ViewEngine(view)

    state = engine.new_state()
    rows = [engine.update(state, int(r["ts"].timestamp() * 1000), r["open"], r["high"], r["low"], r["close"],
                          r["volume"])[1] for r in bars.iter_rows(named=True)]
    one_by_one = pl.DataFrame(rows, schema=view.feature_names, orient="row",
                              schema_overrides=dict.fromkeys(view.feature_names, pl.Float64))
    cuts = sorted(data.draw(st.lists(st.integers(0, n), max_size=4), label="cuts"))
    state, parts = engine.new_state(), []
    for start, stop in zip([0, *cuts], [*cuts, n], strict=True):
        if stop > start:
            parts.append(engine.update_batch(state, bars.slice(start, stop - start)).select(view.feature_names))
    batched = pl.concat(parts)
    for name in accepted:
        context = f"{name} = {render(view.nodes[name])}"
        _assert_bit_identical(expected[name], one_by_one[name], f"one bar at a time: {context}")
        _assert_bit_identical(expected[name], batched[name], f"batches at {cuts}: {context}")
