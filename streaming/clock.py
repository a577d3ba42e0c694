"""Time for the streaming flow: a clock is a function returning epoch milliseconds (UTC).

Logic never reads the time itself; it is handed a clock. Production passes ``wall_clock_ms``; tests
pass a function they control.

>>> clock = fixed_clock(datetime(2024, 5, 1, tzinfo=UTC))
>>> clock(), to_datetime(clock())
(1714521600000, datetime.datetime(2024, 5, 1, 0, 0, tzinfo=datetime.timezone.utc))
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

__all__ = ["Clock", "fixed_clock", "to_datetime", "to_ms", "wall_clock_ms"]

Clock = Callable[[], int]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def wall_clock_ms() -> int:
    """The system clock."""
    return time.time_ns() // 1_000_000


def to_ms(moment: datetime) -> int:
    """Epoch milliseconds of an aware datetime."""
    return (moment - _EPOCH) // timedelta(milliseconds=1)


def to_datetime(ms: int) -> datetime:
    """The aware UTC datetime of epoch milliseconds."""
    return _EPOCH + timedelta(milliseconds=ms)


def fixed_clock(moment: datetime) -> Clock:
    """A clock stopped at ``moment`` (replays of stored history stamp every write with it)."""
    ms = to_ms(moment)
    return lambda: ms
