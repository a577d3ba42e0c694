"""Point-in-time training-set export: the join against a brute-force reference, leaks, files, errors."""

from __future__ import annotations

import json
import math
from dataclasses import FrozenInstanceError
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from featurestore.backfill import backfill
from featurestore.builtin_views import DAILY_TREND
from featurestore.definitions import FeatureView
from featurestore.durations import parse_duration, parse_ttl
from featurestore.errors import FeatureStoreError, TrainingDataError
from featurestore.export import ExportOptions, iter_training_set, training_set, write_training_set
from featurestore.ingest import ingest_resampled, ingest_synthetic
from featurestore.offline import read_features, write_symbol_features
from featurestore.pit_join import point_in_time_join
from featurestore.store import Store
from training.labels import parse_label

T0 = datetime(2024, 1, 1, tzinfo=UTC)
NOW = datetime(2030, 1, 1, tzinfo=UTC)
SYMBOLS = ["BTC/USDT", "ETH/USDT"]
close = pl.col("close")
HOURLY = FeatureView("hourly", "1h", {"ret_1": (close / close.shift(1)).log(), "ret_3": (close / close.shift(3)).log(),
                                      "log_volume": pl.col("volume").log1p()})


def minute(m: int) -> datetime:
    return T0 + timedelta(minutes=m)


# --- the join itself, against a brute-force reference --------------------------------------------

@st.composite
def join_case(draw):
    symbols = draw(st.lists(st.sampled_from(["A", "B", "C"]), min_size=1, max_size=3, unique=True))
    rows = []
    for symbol in symbols:
        stamps = draw(st.lists(st.integers(0, 200), min_size=0, max_size=15, unique=True))
        for ts in sorted(stamps):
            rows.append((symbol, minute(ts), draw(st.floats(-5, 5)), draw(st.none() | st.floats(-1, 1)),
                         minute(ts + draw(st.integers(0, 60)))))
    features = pl.DataFrame(rows, schema={"symbol": pl.String, "ts": pl.Datetime("ms", "UTC"), "x": pl.Float64,
                                          "y": pl.Float64, "created_at": pl.Datetime("us", "UTC")}, orient="row")
    exact = [(r[0], r[1]) for r in rows]
    entity_rows = draw(st.lists(st.one_of(
        st.tuples(st.sampled_from(["A", "B", "C"]), st.integers(-20, 280).map(minute)),  # anywhere, incl. before first
        st.sampled_from(exact) if exact else st.nothing(),  # exact matches of a feature ts
    ), min_size=1, max_size=25))
    entities = pl.DataFrame({"symbol": [e[0] for e in entity_rows], "event_ts": [e[1] for e in entity_rows],
                             "tag": list(range(len(entity_rows)))})
    return features, entities, timedelta(minutes=draw(st.integers(0, 30))), draw(st.booleans())


def brute_force(features: pl.DataFrame, entities: pl.DataFrame, ttl: timedelta, as_of_created: bool) -> list[tuple]:
    out = []
    table = features.rows(named=True)
    for symbol, event_ts in entities.select("symbol", "event_ts").iter_rows():
        seen = [r for r in table if r["symbol"] == symbol and r["ts"] <= event_ts
                and (not as_of_created or r["created_at"] <= event_ts)]
        best = max(seen, key=lambda r: r["ts"], default=None)
        if best is None or event_ts - best["ts"] > ttl:
            out.append((None, None, None))
        else:
            out.append((best["ts"], best["x"], best["y"]))
    return out


@given(case=join_case())
@settings(max_examples=150, deadline=None)
def test_point_in_time_join_equals_brute_force(case):
    features, entities, ttl, as_of_created = case
    got = point_in_time_join(entities, features, view="v", features=["x", "y"], ttl=ttl, as_of_created=as_of_created)
    assert got["tag"].to_list() == entities["tag"].to_list()  # entity rows kept, in order
    assert got.select("v__ts", "v__x", "v__y").rows() == brute_force(features, entities, ttl, as_of_created)
    matched = got.filter(pl.col("v__ts").is_not_null())
    assert (matched["v__ts"] <= matched["event_ts"]).all()  # never a feature row from after the event


def test_ttl_is_inclusive_and_before_first_is_null():
    features = pl.DataFrame({"symbol": ["A"], "ts": [minute(10)], "x": [1.0], "created_at": [minute(10)]})
    entities = pl.DataFrame({"symbol": ["A"] * 4, "event_ts": [minute(9), minute(10), minute(15), minute(16)]})
    got = point_in_time_join(entities, features, view="v", features=["x"], ttl=timedelta(minutes=5))
    assert got["v__x"].to_list() == [None, 1.0, 1.0, None]


# --- against a real store ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    store = Store(tmp_path_factory.mktemp("export") / "store")
    ingest_synthetic(store, SYMBOLS, "1h", since=T0, until=T0 + timedelta(days=40), now=NOW, seed=3)
    ingest_resampled(store, exchange="synthetic", from_timeframe="1h", timeframe="1d", now=NOW)
    backfill(store, HOURLY, now=NOW, progress=False)
    backfill(store, DAILY_TREND, now=NOW, progress=False)
    return store


def random_entities(seed: int, n: int = 300) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    offsets = rng.integers(-2 * 3600, 42 * 86400, size=n)
    offsets[: n // 3] = offsets[: n // 3] // 3600 * 3600  # a third exactly on the hour
    return pl.DataFrame({"symbol": rng.choice(SYMBOLS, size=n),
                         "event_ts": [T0 + timedelta(seconds=int(s)) for s in offsets],
                         "weight_in": rng.normal(size=n)})


def test_all_bars_rows_are_the_stored_rows_with_labels(store):
    label = parse_label("future_ret:h=2")
    frame = training_set(store, [HOURLY, DAILY_TREND], options=ExportOptions(all_bars=True, labels=[label]))
    stored = read_features(store, HOURLY).collect()
    assert frame.height == stored.height
    assert (frame["hourly__ts"].cast(pl.Datetime("us", "UTC")) == frame["event_ts"]).all()
    assert frame.columns[:6] == ["symbol", "event_ts", "hourly__ts", "hourly__ret_1", "hourly__ret_3",
                                 "hourly__log_volume"]
    bars = store.scan_bars("synthetic", "1h", ["ETH/USDT"]).collect()
    expected = label.compute(bars, "1h")["future_ret_h2"]
    got = frame.filter(pl.col("symbol") == "ETH/USDT")["future_ret_h2"]
    assert got.to_list() == expected.to_list()
    daily = frame.filter(pl.col("daily_trend__ts").is_not_null())
    assert ((daily["event_ts"] - daily["daily_trend__ts"].cast(pl.Datetime("us", "UTC"))) <= timedelta(days=1)).all()


def test_no_feature_row_after_event_ts_and_the_future_changes_nothing(store, tmp_path):
    entities = random_entities(1)
    cutoff = T0 + timedelta(days=20, minutes=30)
    before = entities.filter(pl.col("event_ts") <= cutoff)
    views = [HOURLY, DAILY_TREND]
    ttl = parse_ttl("6h", views)
    first = training_set(store, views, before, options=ExportOptions(ttl=ttl))
    for view in views:
        matched = first.filter(pl.col(f"{view.name}__ts").is_not_null())
        assert (matched[f"{view.name}__ts"].cast(pl.Datetime("us", "UTC")) <= matched["event_ts"]).all()
        assert ((matched["event_ts"] - matched[f"{view.name}__ts"]) <= timedelta(hours=6)).all()
    # perturb every stored feature row after the cutoff (in a copy of the store), then export again
    import shutil

    copy = Store(tmp_path / "store")
    shutil.copytree(store.root, copy.root)
    for view in views:
        for symbol in SYMBOLS:
            rows = read_features(copy, view, symbols=[symbol]).collect().drop("created_at", "view_version")
            changed = rows.with_columns(pl.when(pl.col("ts") > cutoff).then(pl.col(f) * 3 + 1).otherwise(pl.col(f))
                                        for f in view.feature_names)
            write_symbol_features(copy, view, "synthetic", symbol, changed, now=NOW, replace=True)
    assert training_set(copy, views, before, options=ExportOptions(ttl=ttl)).equals(first)
    after = training_set(copy, views, entities.filter(pl.col("event_ts") > cutoff + timedelta(days=2)),
                         options=ExportOptions(ttl=ttl))
    assert after["hourly__ret_1"].drop_nulls().len() > 0  # the perturbation is visible after the cutoff


def test_as_of_created_hides_rows_written_after_the_event(tmp_path):
    store = Store(tmp_path / "store")
    ingest_synthetic(store, ["BTC/USDT"], "1h", since=T0, until=T0 + timedelta(days=10), now=NOW)
    written_first = T0 + timedelta(days=5)
    backfill(store, HOURLY, now=written_first, end=written_first, progress=False)  # rows ts < day 5, created day 5
    backfill(store, HOURLY, now=T0 + timedelta(days=8), progress=False)  # the rest, created on day 8
    entities = pl.DataFrame({"symbol": ["BTC/USDT"] * 3, "event_ts": [
        T0 + timedelta(days=4), T0 + timedelta(days=6), T0 + timedelta(days=9)]})
    ttl = {"hourly": timedelta(days=3)}
    plain = training_set(store, [HOURLY], entities, options=ExportOptions(ttl=ttl))
    strict = training_set(store, [HOURLY], entities, options=ExportOptions(ttl=ttl, as_of_created=True))
    assert plain["hourly__ts"].to_list() == [e.replace(tzinfo=UTC) for e in entities["event_ts"].to_list()]
    assert strict["hourly__ts"].to_list() == [None, written_first - timedelta(hours=1), T0 + timedelta(days=9)]


def test_entity_extras_are_kept_and_mid_bar_labels_use_the_last_closed_bar(store):
    entities = pl.DataFrame({"symbol": ["BTC/USDT", "BTC/USDT"], "event_ts": [T0 + timedelta(hours=30, minutes=20),
                                                                              T0 + timedelta(hours=30)],
                             "note": ["mid", "on"]})
    out = training_set(store, [HOURLY], entities, options=ExportOptions(labels=[parse_label("future_ret:h=1")]))
    assert out["note"].to_list() == ["on", "mid"]  # sorted by (symbol, event_ts)
    assert out["future_ret_h1"][0] == out["future_ret_h1"][1]  # both anchored at the bar closing at 30:00
    assert out["hourly__ts"][1] == T0 + timedelta(hours=30)


def test_iter_training_set_yields_one_symbol_at_a_time(store):
    chunks = list(iter_training_set(store, [HOURLY], options=ExportOptions(all_bars=True)))
    assert [c["symbol"].unique().to_list() for c in chunks] == [["BTC/USDT"], ["ETH/USDT"]]


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".arrow"])
def test_writers_round_trip_with_a_sidecar(store, tmp_path, suffix):
    labels = [parse_label("triple_barrier:h=4,pt=2,sl=2,atr=14")]
    entities = random_entities(2, n=50)
    path = tmp_path / f"train{suffix}"
    options = ExportOptions(labels=labels)
    result = write_training_set(path, store, [HOURLY, DAILY_TREND], entities, options=options)
    expected = training_set(store, [HOURLY, DAILY_TREND], entities, options=options)
    if suffix == ".parquet":
        assert pl.read_parquet(path).equals(expected)
    elif suffix == ".arrow":
        assert pl.read_ipc(path).equals(expected)
    else:
        got = pl.read_csv(path, try_parse_dates=True)
        assert got.columns == expected.columns and got.height == expected.height
        for column in ("hourly__ret_1", "tb_h4__ret", "tb_h4__weight"):
            assert np.allclose(got[column].to_numpy(), expected[column].to_numpy(), equal_nan=True)
    meta = json.loads(result.sidecar.read_text())
    assert meta["rows"] == expected.height == result.rows
    assert [(v["name"], v["version"], v["ttl_seconds"]) for v in meta["views"]] == [
        ("hourly", HOURLY.version, 3600.0), ("daily_trend", DAILY_TREND.version, 86400.0)]
    assert meta["labels"][0]["spec"] == "triple_barrier:h=4,pt=2,sl=2,atr=14"
    assert meta["time_range"]["first_event_ts"] == expected["event_ts"].min().isoformat()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_empty_export_is_a_readable_file_with_the_columns(store, tmp_path):
    path = tmp_path / "empty.parquet"
    write_training_set(path, store, [HOURLY],
                       options=ExportOptions(all_bars=True, start=NOW, labels=[parse_label("bucket:h=2")]))
    frame = pl.read_parquet(path)
    assert frame.height == 0 and "bucket_h2" in frame.columns and "hourly__ret_1" in frame.columns


@pytest.mark.parametrize(("content", "message"), [
    (pl.DataFrame({"symbol": ["BTC/USDT"], "when": [T0]}), r"missing column\(s\) \['event_ts'\]"),
    (pl.DataFrame({"event_ts": [T0]}), r"missing column\(s\) \['symbol'\]"),
    (pl.DataFrame({"symbol": ["BTC/USDT"], "event_ts": [datetime(2024, 1, 2)]}), "`event_ts` has naive timestamps"),
    (pl.DataFrame({"symbol": ["BTC/USDT"], "event_ts": ["soon"]}), "`event_ts` must be a timezone-aware timestamp"),
    (pl.DataFrame({"symbol": [1], "event_ts": [T0]}), "`symbol` must be a string"),
    (pl.DataFrame({"symbol": ["DOGE/USDT"], "event_ts": [T0]}), r"no stored features .* \['DOGE/USDT'\]"),
    (pl.DataFrame({"symbol": ["BTC/USDT", None], "event_ts": [T0, T0]}), "1 null symbol"),
    (pl.DataFrame({"symbol": ["BTC/USDT"], "event_ts": [T0], "hourly__ret_1": [1.0]}), "clash with exported columns"),
])
def test_bad_entity_files_are_refused_naming_file_and_column(store, tmp_path, content, message):
    source = tmp_path / "entities.parquet"
    content.write_parquet(source)
    out = tmp_path / "out.parquet"
    with pytest.raises(TrainingDataError, match=message) as error:
        write_training_set(out, store, [HOURLY], source)
    assert "entities.parquet" in str(error.value) or "DOGE" in str(error.value)
    assert not out.exists() and not out.with_name("out.parquet.json").exists()


def test_options_are_typed_keywords_and_a_misspelt_one_is_refused_at_the_call(store, tmp_path):
    with pytest.raises(TypeError, match="'as_of_create'"):
        ExportOptions(all_bars=True, as_of_create=True)
    with pytest.raises(TypeError, match="'all_bars'"):
        training_set(store, [HOURLY], all_bars=True)  # options go in ExportOptions
    with pytest.raises(TypeError, match="'labels'"):
        write_training_set(tmp_path / "out.parquet", store, [HOURLY], labels=[])
    with pytest.raises(TypeError, match="positional"):
        iter_training_set(store, [HOURLY], None, ExportOptions(all_bars=True))
    with pytest.raises(FrozenInstanceError):
        ExportOptions().all_bars = True  # type: ignore[misc]
    assert not list(tmp_path.iterdir())


def test_other_refusals(store, tmp_path):
    with pytest.raises(TrainingDataError, match="does not exist"):
        training_set(store, [HOURLY], tmp_path / "missing.csv")
    with pytest.raises(TrainingDataError, match="either an entity file or all_bars"):
        training_set(store, [HOURLY])
    with pytest.raises(TrainingDataError, match="cannot tell the format"):
        write_training_set(tmp_path / "x.txt", store, [HOURLY], options=ExportOptions(all_bars=True))
    with pytest.raises(FeatureStoreError, match="not a duration"):
        parse_duration("2 hours")
    with pytest.raises(FeatureStoreError, match="'nope' is not one of the exported views"):
        parse_ttl("nope=1h", [HOURLY])
    with pytest.raises(FeatureStoreError, match="run `featurestore backfill --view other`"):
        training_set(store, [FeatureView("other", "1h", {"c": close})], options=ExportOptions(all_bars=True))
    assert parse_ttl("hourly=2h", [HOURLY, DAILY_TREND]) == {"hourly": timedelta(hours=2),
                                                             "daily_trend": timedelta(days=1)}
    assert math.isclose(parse_duration("90m").total_seconds(), 5400)


def test_selected_features_are_exported_in_the_order_asked_and_unknown_ones_refused(tmp_path):
    store = Store(tmp_path / "store")
    ingest_synthetic(store, ["BTC/USDT"], "1d", since=datetime(2024, 1, 1, tzinfo=UTC),
                     until=datetime(2024, 3, 1, tzinfo=UTC), now=datetime(2025, 1, 1, tzinfo=UTC))
    backfill(store, DAILY_TREND, now=datetime(2025, 1, 1, tzinfo=UTC), progress=False)
    options = ExportOptions(all_bars=True, features={"daily_trend": ["mfi_14", "atr_14"]})
    frame = training_set(store, [DAILY_TREND], options=options)
    whole = training_set(store, [DAILY_TREND], options=ExportOptions(all_bars=True))
    assert frame.columns == ["symbol", "event_ts", "daily_trend__ts", "daily_trend__mfi_14", "daily_trend__atr_14"]
    assert frame.equals(whole.select(frame.columns))
    with pytest.raises(TrainingDataError, match="has no feature"):
        training_set(store, [DAILY_TREND], options=ExportOptions(all_bars=True, features={"daily_trend": ["mfi"]}))
    with pytest.raises(TrainingDataError, match="not exported"):
        training_set(store, [DAILY_TREND], options=ExportOptions(all_bars=True, features={"research": ["ret_1"]}))
