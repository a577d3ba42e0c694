"""Bar timeframes in ccxt notation (``1m``, ``4h``, ``1d``, ``1w``) and the arithmetic on them.

>>> from featurestore.timeframes import timeframe_ms, floor_ms
>>> timeframe_ms("15m")
900000
>>> floor_ms(1_700_000_123_456, "1h")
1699999200000
>>> from datetime import datetime, timezone
>>> epoch_ms(datetime(2024, 1, 1, tzinfo=timezone.utc)), from_epoch_ms(1704067200000).isoformat()
(1704067200000, '2024-01-01T00:00:00+00:00')
>>> timeframe_ms("15min")
Traceback (most recent call last):
...
featurestore.errors.FeatureStoreError: unknown timeframe '15min': use a count and a unit m, h, d or w, e.g. '1m', '4h', '1d', '1w'; did you mean '15m'?
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from featurestore.errors import FeatureStoreError

__all__ = ["aligned", "canonical_timeframe", "epoch_ms", "floor_ms", "from_epoch_ms", "offset_ms", "timeframe_ms"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)

_UNIT_MS = {"m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 7 * 86_400_000}
# Weekly bars open on Monday 00:00 UTC (ccxt/Binance convention); the Unix epoch was a Thursday.
_WEEK_OFFSET_MS = 4 * 86_400_000
_PATTERN = re.compile(r"^([1-9][0-9]*)([mhdw])$")
# Spellings people type for a unit, for the hint of the error (ccxt's "1M" is a month: no fixed length, no hint).
_UNIT_WORDS = {"m": ("min", "mins", "minute", "minutes"), "h": ("hr", "hrs", "hour", "hours"),
               "d": ("day", "days"), "w": ("wk", "week", "weeks")}
_SPELLED = re.compile(r"^([1-9][0-9]*)([a-z]+)$")


def timeframe_ms(timeframe: str) -> int:
    """Length of one bar in milliseconds; refuses anything not ``<n><m|h|d|w>``."""
    match = _PATTERN.match(timeframe) if isinstance(timeframe, str) else None
    if match is None:
        suggestion = _suggest(timeframe)
        raise FeatureStoreError(
            f"unknown timeframe {timeframe!r}: use a count and a unit m, h, d or w, e.g. '1m', '4h', '1d', '1w'"
            + (f"; did you mean {suggestion!r}?" if suggestion else "")
        )
    return int(match.group(1)) * _UNIT_MS[match.group(2)]


def canonical_timeframe(timeframe: str) -> str:
    """``timeframe`` if it is spelled in its largest whole unit, as exchanges name bars; else an error with the
    spelling to use (``60m`` and ``1h`` would be two stored series of the same bars).

    >>> canonical_timeframe("4h")
    '4h'
    >>> canonical_timeframe("60m")
    Traceback (most recent call last):
    ...
    featurestore.errors.FeatureStoreError: timeframe '60m' is spelled '1h' in this store (one spelling per bar size, as exchanges name them)
    """
    length = timeframe_ms(timeframe)
    # weeks open on Monday, 7d bars on the epoch's Thursday: different grids, so days never become weeks
    unit = "w" if timeframe.endswith("w") else next(u for u in ("d", "h", "m") if length % _UNIT_MS[u] == 0)
    canonical = f"{length // _UNIT_MS[unit]}{unit}"
    if canonical != timeframe:
        raise FeatureStoreError(f"timeframe {timeframe!r} is spelled {canonical!r} in this store (one spelling per "
                                f"bar size, as exchanges name them)")
    return timeframe


def _suggest(timeframe: object) -> str | None:
    """The ccxt spelling of a timeframe typed another way (``4H``, ``1 h``, ``15min``, ``2days``), if any."""
    if not isinstance(timeframe, str) or timeframe.strip().endswith("M"):
        return None
    match = _SPELLED.match("".join(timeframe.split()).lower())
    if match is None:
        return None
    count, word = match.groups()
    unit = next((unit for unit, words in _UNIT_WORDS.items() if word == unit or word in words), None)
    return f"{count}{unit}" if unit else None


def offset_ms(timeframe: str) -> int:
    """Where the bar grid starts relative to the epoch: Monday for weekly bars, else 0."""
    return _WEEK_OFFSET_MS if timeframe_ms(timeframe) and timeframe.endswith("w") else 0


def floor_ms(ts_ms: int, timeframe: str) -> int:
    """Open time of the bar that contains ``ts_ms``."""
    step, offset = timeframe_ms(timeframe), offset_ms(timeframe)
    return (ts_ms - offset) // step * step + offset


def aligned(ts_ms: int, timeframe: str) -> bool:
    """True when ``ts_ms`` is the open time of a bar of this timeframe."""
    return floor_ms(ts_ms, timeframe) == ts_ms


def epoch_ms(moment: datetime) -> int:
    """An aware datetime as epoch milliseconds (exact: integer arithmetic, no float seconds)."""
    return (moment - _EPOCH) // _MS


def from_epoch_ms(ms: int) -> datetime:
    """Epoch milliseconds as an aware UTC datetime."""
    return _EPOCH + ms * _MS
