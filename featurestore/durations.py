"""Moments and durations as users write them: ``2024-01-01T12:00Z``, ``90s``, ``2h``, and per-view TTLs.

>>> parse_utc("2024-01-01")
datetime.datetime(2024, 1, 1, 0, 0, tzinfo=datetime.timezone.utc)
>>> parse_duration("90m")
datetime.timedelta(seconds=5400)
>>> from types import SimpleNamespace as View
>>> parse_ttl("research=2m", [View(name="research", timeframe="1m"), View(name="daily", timeframe="1d")])
{'research': datetime.timedelta(seconds=120), 'daily': datetime.timedelta(days=1)}
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from featurestore.errors import FeatureStoreError
from featurestore.timeframes import timeframe_ms

__all__ = ["parse_bars_or_duration", "parse_duration", "parse_timezone", "parse_ttl", "parse_utc", "parse_view_durations"]

_DURATION = re.compile(r"^([0-9]+)(ms|s|m|h|d|w)$")
_UNIT = {"ms": timedelta(milliseconds=1), "s": timedelta(seconds=1), "m": timedelta(minutes=1),
         "h": timedelta(hours=1), "d": timedelta(days=1), "w": timedelta(weeks=1)}


class _Timed(Protocol):
    name: str
    timeframe: str


def parse_utc(text: str) -> datetime:
    """``2024-01-01`` or ``2024-01-01T12:00[:00][+00:00|Z]``; a time without an offset is UTC."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise FeatureStoreError(f"not an ISO-8601 date/time: {text!r} (e.g. 2024-01-01 or 2024-01-01T12:00Z)") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def parse_timezone(text: str) -> str:
    """An IANA time zone name (``UTC``, ``Europe/Berlin``), checked against the zone database.

    >>> parse_timezone("Europe/Berlin")
    'Europe/Berlin'
    >>> parse_timezone("CEST")
    Traceback (most recent call last):
    ...
    featurestore.errors.FeatureStoreError: unknown time zone 'CEST'; use an IANA name such as UTC, Europe/Berlin or America/New_York
    """
    name = text.strip()
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a name too long for a file name
        raise FeatureStoreError(f"unknown time zone {text!r}; use an IANA name such as UTC, Europe/Berlin or "
                                "America/New_York") from None
    return name


def parse_duration(text: str) -> timedelta:
    """``90s``, ``15m``, ``2h``, ``1d``, ``1w`` (also ``ms``) -> timedelta."""
    match = _DURATION.match(text.strip())
    if match is None:
        raise FeatureStoreError(f"not a duration: {text!r}; use a count and a unit ms, s, m, h, d or w, e.g. 2h or 90m")
    return int(match.group(1)) * _UNIT[match.group(2)]


def parse_bars_or_duration(text: str) -> int | timedelta:
    """A count of bars (``3``) or a duration (``2h``), as ``train --embargo`` takes it.

    >>> parse_bars_or_duration("3"), parse_bars_or_duration("2h")
    (3, datetime.timedelta(seconds=7200))
    """
    text = text.strip()
    if text.isdigit():
        return int(text)
    try:
        return parse_duration(text)
    except FeatureStoreError:
        raise FeatureStoreError(f"not a count of bars or a duration: {text!r}; use e.g. 3 (bars) or 2h") from None


def parse_view_durations(text: str) -> timedelta | dict[str, timedelta]:
    """``2h`` (one duration for every view) or ``research=2m,daily_trend=1d`` (per view).

    >>> parse_view_durations("research=90s")
    {'research': datetime.timedelta(seconds=90)}
    """
    if "=" not in text:
        return parse_duration(text)
    return {name.strip(): parse_duration(value) for name, _, value in (part.partition("=") for part in text.split(","))}


def parse_ttl(text: str | None, views: Sequence[_Timed]) -> dict[str, timedelta]:
    """TTL per view: ``None`` -> one timeframe each; ``2h`` -> 2h for every view; ``research=2m,daily_trend=1d``
    -> per view (unnamed views keep their default)."""
    ttl = {view.name: timedelta(milliseconds=timeframe_ms(view.timeframe)) for view in views}
    given = {} if text is None else parse_view_durations(text)
    if isinstance(given, timedelta):
        return dict.fromkeys(ttl, given)
    unknown = sorted(set(given) - set(ttl))
    if unknown:
        raise FeatureStoreError(f"--ttl {text!r}: {unknown[0]!r} is not one of the exported views {sorted(ttl)}")
    return {**ttl, **given}
