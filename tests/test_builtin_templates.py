"""Built-in templates: ``builtin_view(name, timeframe)`` binds a built-in feature set to any timeframe.

At the default timeframe the bound view is today's view, version included (stored data carries it); at
another it is ``<template>_<timeframe>`` with a version of its own. Windows count bars of the bound
timeframe. Unknown names and timeframes are refused with a hint. The values of every bound feature are
checked against independent references in ``test_builtin_references.py``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from featurestore.builtin_views import (
    BUILTIN_TEMPLATES,
    BUILTIN_VIEWS,
    DAILY_TREND,
    INDICATORS,
    RESEARCH,
    builtin_view,
)
from featurestore.errors import DefinitionError
from featurestore.sources.synthetic import synthetic_bars
from featurestore.timeframes import timeframe_ms

# Pinned: stored feature data records these versions. A different value means every stored dataset of that
# view silently becomes another version; change only together with a migration note.
DEFAULT_VERSIONS = {"research": "dd3bf15104ac5bd6", "indicators": "864cb782f9429de1",
                    "daily_trend": "46c0d008376e73a0"}
BOUND_VERSIONS = {("research", "1h"): "1af7c0e76f179f7b", ("indicators", "4h"): "0b63fc929029c4fe",
                  ("daily_trend", "1w"): "ed8f68f326d13924"}


def test_templates_are_the_three_builtin_sets_with_their_default_timeframes():
    assert {name: t.timeframe for name, t in BUILTIN_TEMPLATES.items()} == \
        {"research": "1m", "indicators": "1m", "daily_trend": "1d"}
    assert [view.name for view in BUILTIN_VIEWS] == ["research", "indicators", "daily_trend"]


@pytest.mark.parametrize(("name", "constant"), [("research", RESEARCH), ("indicators", INDICATORS),
                                                ("daily_trend", DAILY_TREND)])
def test_default_binding_is_todays_view_with_its_pinned_version(name, constant):
    view = builtin_view(name, BUILTIN_TEMPLATES[name].timeframe)
    assert view.version == constant.version == DEFAULT_VERSIONS[name]
    assert (view.name, view.timeframe, view.description) == (constant.name, constant.timeframe, constant.description)
    assert view.definition == constant.definition


@pytest.mark.parametrize(("name", "timeframe"), list(BOUND_VERSIONS))
def test_binding_at_another_timeframe_is_a_view_of_its_own(name, timeframe):
    view, default = builtin_view(name, timeframe), builtin_view(name, BUILTIN_TEMPLATES[name].timeframe)
    assert (view.name, view.timeframe) == (f"{name}_{timeframe}", timeframe)
    assert view.version == BOUND_VERSIONS[name, timeframe] != default.version
    # the same expressions: only the name and the timeframe of the definition differ
    assert json.dumps(view.definition["features"], sort_keys=True) == \
        json.dumps(default.definition["features"], sort_keys=True)
    assert view.feature_names == default.feature_names


def test_every_binding_has_its_own_version():
    timeframes = ["1m", "5m", "1h", "4h", "1d", "1w"]
    versions = {builtin_view(name, tf).version for name in BUILTIN_TEMPLATES for tf in timeframes}
    assert len(versions) == len(BUILTIN_TEMPLATES) * len(timeframes)


@pytest.mark.parametrize("timeframe", ["1h", "4h", "1d"])
def test_windows_count_bars_of_the_bound_timeframe(timeframe):
    """rv_24 is null for exactly 24 rows and adv_30 for 29, whatever a bar lasts."""
    since = datetime(2024, 1, 1, tzinfo=UTC)
    bars = synthetic_bars(["ETH/USDT"], timeframe, since=since,
                          until=since + 100 * timedelta(milliseconds=timeframe_ms(timeframe)))
    rows = builtin_view("research", timeframe).compute_symbol(bars)
    assert rows.height == 100
    assert rows["rv_24"].null_count() == 24 and rows["adv_30"].null_count() == 29
    assert rows["ts"][0] == since + timedelta(milliseconds=timeframe_ms(timeframe))  # stamped at the bar's close


@pytest.mark.parametrize(("timeframe", "hour", "weekday"), [("1d", 0.0, None), ("1w", 0.0, 1.0)])
def test_calendar_features_stay_as_they_are_on_long_bars(timeframe, hour, weekday):
    """Documented, not special-cased: on daily bars the row time is always midnight, on weekly bars Monday."""
    since = datetime(2024, 1, 1, tzinfo=UTC)  # a Monday
    bars = synthetic_bars(["ETH/USDT"], timeframe, since=since, until=since + timedelta(days=70))
    rows = builtin_view("indicators", timeframe).compute_symbol(bars)
    assert rows["hour"].unique().to_list() == [hour]
    assert rows["hour_sin"].unique().to_list() == [0.0] and rows["hour_cos"].unique().to_list() == [1.0]
    if weekday is None:
        assert rows["weekday"].n_unique() == 7
    else:
        assert rows["weekday"].unique().to_list() == [weekday]


@pytest.mark.parametrize(("name", "hint"), [
    ("reserch", "did you mean 'research'?"),
    ("indicator", "did you mean 'indicators'?"),
    ("daily", "did you mean 'daily_trend'?"),
    ("RESEARCH", "did you mean 'research'?"),
    ("research_1h", "did you mean 'research'?"),  # a bound view's name is not a template
    ("momentum", None),
])
def test_unknown_template_is_refused_with_a_hint(name, hint):
    with pytest.raises(DefinitionError) as info:
        builtin_view(name, "1h")
    message = str(info.value)
    assert message.startswith(f"unknown built-in template {name!r}")
    assert message.endswith("(available: daily_trend, indicators, research)")
    if hint:
        assert hint in message
    else:
        assert "did you mean" not in message


@pytest.mark.parametrize(("timeframe", "hint"), [
    ("1H", "'1h'"), ("4 h", "'4h'"), ("15min", "'15m'"), ("2days", "'2d'"), ("1week", "'1w'"), ("1hr", "'1h'"),
    ("1M", None),  # ccxt's month: no fixed length, and not a minute either
    ("0m", None), ("1.5h", None), ("hourly", None), ("", None), (60, None), (None, None),
])
def test_bad_timeframe_is_a_definition_error_with_a_hint(timeframe, hint):
    with pytest.raises(DefinitionError) as info:
        builtin_view("research", timeframe)
    message = str(info.value)
    assert message.startswith(f"built-in template 'research': unknown timeframe {timeframe!r}: use a count and a unit")
    if hint:
        assert message.endswith(f"; did you mean {hint}?")
    else:
        assert "did you mean" not in message
