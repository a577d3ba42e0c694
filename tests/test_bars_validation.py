"""The bar contract on the way in: every rule, one bad row in an otherwise good multi-symbol batch.

Each rejected batch must name the rule, the symbol and the ``ts`` of the bad row, and must leave the
store byte-for-byte as it was (``ingest_bars`` into a store that already holds good data).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from featurestore.bars import BAR_COLUMNS, PRICE_COLUMNS, TS_DTYPE, find_gaps, validate_bars
from featurestore.errors import BarValidationError, FeatureStoreError
from featurestore.ingest import ingest_bars, ingest_synthetic
from featurestore.sources.synthetic import synthetic_bars
from featurestore.store import Store
from featurestore.timeframes import timeframe_ms

NOW = datetime(2030, 1, 1, tzinfo=UTC)
SYMBOLS = ["BTC/USDT", "ETH/USDT", "BTC/USDT:USDT"]
SINCE, UNTIL = datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 8, tzinfo=UTC)
SOURCE = "unit-test batch"
BAD_SYMBOL = "ETH/USDT"
BAD_INDEX = 10  # the bad row is ETH/USDT's 11th bar, in the middle of the batch


@pytest.fixture(scope="module")
def good_store(tmp_path_factory) -> Store:
    """A store holding one week of good 1h bars for every symbol (never modified by these tests)."""
    store = Store(tmp_path_factory.mktemp("validation") / "store")
    ingest_synthetic(store, SYMBOLS, "1h", since=SINCE, until=UNTIL, now=NOW)
    return store


def good_batch(timeframe: str = "1h") -> pl.DataFrame:
    """The next bars after the stored week (or a quarter of weekly bars): valid, and new to the store."""
    if timeframe == "1w":
        return synthetic_bars(SYMBOLS, "1w", since=datetime(2024, 1, 1, tzinfo=UTC),
                              until=datetime(2024, 4, 1, tzinfo=UTC))
    return synthetic_bars(SYMBOLS, timeframe, since=UNTIL, until=UNTIL + timedelta(days=2))


def bad_row_index(batch: pl.DataFrame) -> int:
    positions = batch.with_row_index("_i").filter(pl.col("symbol") == BAD_SYMBOL)["_i"]
    return int(positions[BAD_INDEX])


def set_cell(batch: pl.DataFrame, row: int, column: str, value: object) -> pl.DataFrame:
    """``batch`` with one cell replaced (``None`` for a null), keeping the column's dtype."""
    dtype = batch.schema[column]
    new = pl.lit(None, dtype) if value is None else pl.lit(value).cast(dtype)
    return batch.with_columns(pl.when(pl.int_range(pl.len()) == row).then(new).otherwise(pl.col(column)).alias(column))


@pytest.fixture(scope="module")
def ingest_refused(good_store, hash_tree):
    """``ingest_refused(batch, timeframe)``: assert the batch is refused and not a byte of the store changed."""

    def ingest(batch: pl.DataFrame, timeframe: str = "1h") -> BarValidationError:
        before = hash_tree(good_store.root)
        assert before, "the store should hold good data"
        with pytest.raises(BarValidationError) as caught:
            ingest_bars(good_store, batch, exchange="synthetic", timeframe=timeframe, source=SOURCE)
        assert hash_tree(good_store.root) == before, "a refused batch changed the store"
        return caught.value

    return ingest


def test_the_good_batch_is_stored(tmp_path, hash_tree):
    # Guards the tests below: without the bad row, the very same batch is accepted and changes the store.
    store = Store(tmp_path / "store")
    ingest_synthetic(store, SYMBOLS, "1h", since=SINCE, until=UNTIL, now=NOW)
    before = hash_tree(store.root)
    assert ingest_bars(store, good_batch(), exchange="synthetic", timeframe="1h", source=SOURCE) == dict.fromkeys(
        SYMBOLS, 48)
    assert hash_tree(store.root) != before
    assert ingest_bars(store, good_batch("1w"), exchange="synthetic", timeframe="1w", source=SOURCE) == dict.fromkeys(
        SYMBOLS, 13)


# ---------------------------------------------------------------------------------------------------------
# Row rules: (case id, timeframe, column, new value from the original row, rule text)

def _shift_ts(delta: timedelta):
    return lambda row, previous: row["ts"] + delta


ROW_CASES = [
    ("1h bar at :30", "1h", "ts", _shift_ts(timedelta(minutes=30)), "ts aligned to the timeframe"),
    ("1h bar one ms late", "1h", "ts", _shift_ts(timedelta(milliseconds=1)), "ts aligned to the timeframe"),
    ("weekly bar on a Tuesday", "1w", "ts", _shift_ts(timedelta(days=1)), "ts aligned to the timeframe"),
    ("weekly bar on a Sunday", "1w", "ts", _shift_ts(timedelta(days=-1)), "ts aligned to the timeframe"),
    ("duplicate ts", "1h", "ts", lambda row, previous: previous["ts"], "ts strictly increasing per symbol"),
    ("decreasing ts", "1h", "ts", lambda row, previous: previous["ts"] - timedelta(hours=1),
     "ts strictly increasing per symbol"),
    *[
        (f"{column} {label}", "1h", column, lambda row, previous, v=value: v, "prices are positive and finite")
        for column in PRICE_COLUMNS
        for label, value in [("zero", 0.0), ("negative", -1.0), ("NaN", math.nan), ("inf", math.inf),
                             ("-inf", -math.inf)]
    ],
    ("low just above min(open, close)", "1h", "low",
     lambda row, previous: math.nextafter(min(row["open"], row["close"]), math.inf), "low <= min(open, close)"),
    ("low above both open and close", "1h", "low",
     lambda row, previous: max(row["open"], row["close"]) * 1.01, "low <= min(open, close)"),
    ("high just below max(open, close)", "1h", "high",
     lambda row, previous: math.nextafter(max(row["open"], row["close"]), 0.0), "max(open, close) <= high"),
    ("high below both open and close", "1h", "high",
     lambda row, previous: min(row["open"], row["close"]) * 0.99, "max(open, close) <= high"),
    ("volume negative", "1h", "volume", lambda row, previous: -0.5, "volume is finite and >= 0"),
    ("volume NaN", "1h", "volume", lambda row, previous: math.nan, "volume is finite and >= 0"),
    ("volume inf", "1h", "volume", lambda row, previous: math.inf, "volume is finite and >= 0"),
    ("volume -inf", "1h", "volume", lambda row, previous: -math.inf, "volume is finite and >= 0"),
]


@pytest.mark.parametrize(("timeframe", "column", "make_value", "rule"), [case[1:] for case in ROW_CASES],
                         ids=[case[0] for case in ROW_CASES])
def test_one_bad_row_is_refused_naming_rule_symbol_and_ts(ingest_refused, timeframe, column, make_value, rule):
    batch = good_batch(timeframe)
    row = bad_row_index(batch)
    value = make_value(batch.row(row, named=True), batch.row(row - 1, named=True))
    bad = set_cell(batch, row, column, value)
    bad_ts = bad["ts"][row]

    error = ingest_refused(bad, timeframe)

    message = str(error)
    assert f"rule '{rule}' broken" in message
    assert f"symbol {BAD_SYMBOL}" in message
    assert f"ts {bad_ts}" in message
    assert f"source {SOURCE}" in message
    assert f"row {row} of the batch" in message
    assert (error.rule, error.symbol, error.ts) == (rule, BAD_SYMBOL, bad_ts)


@pytest.mark.parametrize("column", BAR_COLUMNS)
def test_a_null_in_any_column_is_refused(ingest_refused, column):
    batch = good_batch()
    row = bad_row_index(batch)
    original = batch.row(row, named=True)

    error = ingest_refused(set_cell(batch, row, column, None))

    message = str(error)
    assert f"rule '{column} is not null' broken" in message
    assert f"{column} is null" in message
    assert f"row {row} of the batch" in message
    # The row is named by whatever it still has: its symbol unless that is the null, its ts likewise.
    if column != "symbol":
        assert f"symbol {BAD_SYMBOL}" in message
    if column != "ts":
        assert f"ts {original['ts']}" in message


# ---------------------------------------------------------------------------------------------------------
# Column rules: the whole column is wrong, so the error names the column (there is no single bad row).

COLUMN_CASES = [
    ("missing volume", lambda b: b.drop("volume"), "schema", "missing column(s) ['volume']"),
    ("missing ts", lambda b: b.drop("ts"), "schema", "missing column(s) ['ts']"),
    ("close as text", lambda b: b.with_columns(pl.col("close").cast(pl.String)), "schema",
     "column 'close' has dtype String"),
    ("volume as bool", lambda b: b.with_columns(pl.col("volume") > 1), "schema", "column 'volume' has dtype Boolean"),
    ("symbol as categorical", lambda b: b.with_columns(pl.col("symbol").cast(pl.Categorical)), "schema",
     "column 'symbol' has dtype Categorical"),
    ("ts as epoch ms integers", lambda b: b.with_columns(pl.col("ts").dt.epoch("ms")), "ts is a UTC datetime",
     "column 'ts' has dtype Int64"),
    ("ts as ISO text", lambda b: b.with_columns(pl.col("ts").dt.to_string()), "ts is a UTC datetime",
     "column 'ts' has dtype String"),
    ("naive ts", lambda b: b.with_columns(pl.col("ts").dt.replace_time_zone(None)), "ts is a UTC datetime",
     "time_zone=None"),
    ("ts in Europe/Berlin", lambda b: b.with_columns(pl.col("ts").dt.convert_time_zone("Europe/Berlin")),
     "ts is a UTC datetime", "time_zone='Europe/Berlin'"),
]


@pytest.mark.parametrize(("corrupt", "rule", "detail"), [c[1:] for c in COLUMN_CASES], ids=[c[0] for c in COLUMN_CASES])
def test_a_bad_column_is_refused_naming_the_column(ingest_refused, corrupt, rule, detail):
    error = ingest_refused(corrupt(good_batch()))
    assert f"rule '{rule}' broken" in str(error)
    assert detail in str(error)
    assert f"source {SOURCE}" in str(error)


def test_validation_accepts_int_prices_and_other_utc_units_unchanged_in_content():
    batch = good_batch()
    cast = batch.with_columns(pl.col("ts").cast(pl.Datetime("ns", "UTC")), pl.col("volume").round().cast(pl.Int64))
    out = validate_bars(cast, "1h")
    assert out.schema == pl.Schema({"symbol": pl.String, "ts": TS_DTYPE, **dict.fromkeys(
        (*PRICE_COLUMNS, "volume"), pl.Float64)})
    assert_frame_equal(out, batch.with_columns(pl.col("volume").round()))


def test_a_sub_millisecond_misaligned_ts_is_refused():
    batch = good_batch().with_columns(pl.col("ts").cast(pl.Datetime("us", "UTC")))
    row = bad_row_index(batch)
    bad = set_cell(batch, row, "ts", batch["ts"][row] + timedelta(microseconds=500))
    with pytest.raises(BarValidationError, match="ts has whole milliseconds"):
        validate_bars(bad, "1h")


# ---------------------------------------------------------------------------------------------------------
# Properties: any valid generated batch passes; any single corrupted row is caught and named.

TIMEFRAMES = ["1m", "1h", "1d", "1w"]
BASE_MS = int(datetime(2024, 1, 1, tzinfo=UTC).timestamp() * 1000)  # a Monday 00:00: aligned for every timeframe
finite_price = st.floats(min_value=1e-6, max_value=1e7, allow_nan=False, allow_infinity=False)
fraction = st.one_of(st.just(0.0), st.floats(min_value=0.0, max_value=0.5))


@st.composite
def valid_batches(draw) -> tuple[pl.DataFrame, str]:
    timeframe = draw(st.sampled_from(TIMEFRAMES))
    step = timeframe_ms(timeframe)
    symbols = draw(st.lists(st.sampled_from(SYMBOLS), min_size=1, max_size=3, unique=True))
    rows = []
    for symbol in symbols:
        start = draw(st.integers(0, 500))
        offsets = sorted(draw(st.sets(st.integers(0, 60), min_size=1, max_size=15)))
        for offset in offsets:
            open_, close = draw(finite_price), draw(finite_price)
            up, down = draw(fraction), draw(fraction)
            rows.append({
                "symbol": symbol, "ts": BASE_MS + (start + offset) * step, "open": open_,
                "high": max(open_, close) * (1 + up), "low": min(open_, close) * (1 - down), "close": close,
                "volume": draw(st.one_of(st.just(0.0), st.floats(min_value=0.0, max_value=1e12))),
            })
    if draw(st.booleans()):  # interleave the symbols, as a feed does; each symbol stays in time order
        rows.sort(key=lambda r: r["ts"])
    batch = pl.DataFrame(rows, schema={"symbol": pl.String, "ts": pl.Int64, **dict.fromkeys(
        (*PRICE_COLUMNS, "volume"), pl.Float64)})
    return batch.with_columns(pl.from_epoch("ts", time_unit="ms").dt.replace_time_zone("UTC").cast(TS_DTYPE)), timeframe


@settings(max_examples=100, deadline=None)
@given(valid_batches())
def test_any_valid_batch_passes_unchanged(case):
    batch, timeframe = case
    assert_frame_equal(validate_bars(batch, timeframe, source=SOURCE), batch)


def _corruptions(row: dict, previous: dict | None, step: int) -> list[tuple[str, object, str]]:
    """(column, new value, rule) for every way to break exactly one rule in this row."""
    options = [(column, None, f"{column} is not null") for column in BAR_COLUMNS]
    options.append(("ts", row["ts"] + timedelta(milliseconds=step // 2), "ts aligned to the timeframe"))
    if previous is not None:
        options.append(("ts", previous["ts"], "ts strictly increasing per symbol"))
        options.append(("ts", previous["ts"] - timedelta(milliseconds=step), "ts strictly increasing per symbol"))
    for column in PRICE_COLUMNS:
        for value in (0.0, -0.0, -row[column], math.nan, math.inf, -math.inf):
            options.append((column, value, "prices are positive and finite"))
    options.append(("low", math.nextafter(min(row["open"], row["close"]), math.inf), "low <= min(open, close)"))
    options.append(("high", math.nextafter(max(row["open"], row["close"]), 0.0), "max(open, close) <= high"))
    for value in (-5e-324, -1.0, math.nan, math.inf, -math.inf):
        options.append(("volume", value, "volume is finite and >= 0"))
    return options


@settings(max_examples=150, deadline=None)
@given(case=valid_batches(), data=st.data())
def test_any_single_corrupted_row_is_caught_and_named(ingest_refused, case, data):
    batch, timeframe = case
    row = data.draw(st.integers(0, batch.height - 1), label="row")
    target = batch.row(row, named=True)
    same_symbol_before = batch.head(row).filter(pl.col("symbol") == target["symbol"])
    previous = same_symbol_before.row(-1, named=True) if same_symbol_before.height else None
    column, value, rule = data.draw(st.sampled_from(_corruptions(target, previous, timeframe_ms(timeframe))),
                                   label="corruption")
    bad = set_cell(batch, row, column, value)

    error = ingest_refused(bad, timeframe)

    message = str(error)
    assert error.rule == rule
    assert f"rule '{rule}' broken" in message
    assert f"row {row} of the batch" in message
    if column != "symbol":
        assert error.symbol == target["symbol"]
        assert f"symbol {target['symbol']}" in message
    if column != "ts" or value is not None:
        bad_ts = bad["ts"][row]
        assert error.ts == bad_ts
        assert f"ts {bad_ts}" in message


# ---------------------------------------------------------------------------------------------------------
# find_gaps against a brute-force set difference over the full timestamp range.

@st.composite
def gapped_series(draw) -> tuple[pl.DataFrame, str, dict[str, set[int]]]:
    timeframe = draw(st.sampled_from(TIMEFRAMES))
    symbols = draw(st.lists(st.sampled_from(SYMBOLS), min_size=1, max_size=3, unique=True))
    present = {symbol: draw(st.sets(st.integers(0, 120), min_size=1, max_size=80)) for symbol in symbols}
    step = timeframe_ms(timeframe)
    rows = [(symbol, BASE_MS + k * step) for symbol, ks in present.items() for k in ks]
    rows = draw(st.permutations(rows))  # find_gaps must not rely on the input order
    frame = pl.DataFrame(rows, schema={"symbol": pl.String, "ts": pl.Int64}, orient="row")
    frame = frame.with_columns(pl.from_epoch("ts", time_unit="ms").dt.replace_time_zone("UTC").cast(TS_DTYPE))
    return frame, timeframe, present


def _brute_force_gaps(present: dict[str, set[int]], step: int) -> list[tuple]:
    gaps = []
    for symbol, ks in present.items():
        missing = sorted(set(range(min(ks), max(ks) + 1)) - ks)
        runs: list[list[int]] = []
        for k in missing:
            if runs and runs[-1][-1] == k - 1:
                runs[-1].append(k)
            else:
                runs.append([k])
        gaps += [(symbol, datetime.fromtimestamp((BASE_MS + run[0] * step) / 1000, UTC), len(run)) for run in runs]
    return sorted(gaps)


@settings(max_examples=150, deadline=None)
@given(gapped_series())
def test_find_gaps_equals_the_brute_force_set_difference(case):
    frame, timeframe, present = case
    expected = _brute_force_gaps(present, timeframe_ms(timeframe))
    for source in (frame, frame.lazy()):
        gaps = find_gaps(source, timeframe)
        assert gaps.columns == ["symbol", "first_missing", "missing_bars"]
        assert gaps.schema["first_missing"] == TS_DTYPE
        assert sorted(gaps.rows()) == expected


def test_validate_errors_are_feature_store_errors():
    # Users catch one exception type (FeatureStoreError, itself a ValueError) for every bad input.
    bad = set_cell(good_batch(), 3, "volume", -1.0)
    with pytest.raises(FeatureStoreError):
        validate_bars(bad, "1h")
    with pytest.raises(ValueError):
        validate_bars(bad, "1h")
