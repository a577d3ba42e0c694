"""Calendar fields of ``ts`` or ``close_ts`` (UTC): ``dt.hour``, ``dt.minute``, ``dt.weekday``, ``dt.day``,
``dt.month``, as integers (Int8 in polars: cast to Float64 before arithmetic).

``dt.weekday`` is the ISO weekday, Monday = 1 ... Sunday = 7. Both columns are epoch milliseconds in the
engine; ``close_ts`` is ``ts`` plus the timeframe, so ``close_ts.dt.hour()`` describes the time the feature
row is stamped at.

>>> hour_of(3_600_000.0 * 49 + 1.0), weekday_of(0.0), month_of(1_709_164_800_000.0), day_of(1_709_164_800_000.0)
(1.0, 4.0, 2.0, 29.0)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from featurestore.errors import UnsupportedExpressionError
from featurestore.operators.base import INT, TIME, Operator, kernel, template

__all__ = ["OPERATORS", "day_of", "hour_of", "minute_of", "month_of", "weekday_of"]

_DAY_MS = 86_400_000.0


@kernel
def hour_of(ts_ms):
    return math.floor(ts_ms / 3_600_000.0) % 24.0


@kernel
def minute_of(ts_ms):
    return math.floor(ts_ms / 60_000.0) % 60.0


@kernel
def weekday_of(ts_ms):
    """ISO weekday, Monday = 1 ... Sunday = 7 (1970-01-01 was a Thursday)."""
    return (math.floor(ts_ms / _DAY_MS) + 3.0) % 7.0 + 1.0


@kernel
def _civil(ts_ms):
    """(year, month, day) of a UTC epoch-millisecond time (Howard Hinnant's days_from_civil inverse)."""
    z = math.floor(ts_ms / _DAY_MS) + 719468
    era = (z if z >= 0 else z - 146096) // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (1 if month <= 2 else 0), month, day


@kernel
def day_of(ts_ms):
    return float(_civil(ts_ms)[2])


@kernel
def month_of(ts_ms):
    return float(_civil(ts_ms)[1])


def _of_timestamp(shown: str, kinds: tuple[str, ...], params: Mapping[str, Any]) -> str:
    if kinds[0] != TIME:
        raise UnsupportedExpressionError(f"{shown}() applies to the columns ('ts', 'close_ts') only")
    return INT


def _field(name: str, polars: str, function) -> Operator:
    return Operator(name, (f"TemporalExpr.{polars}",), _of_timestamp, label=f"dt.{name}",
                    code=template(f"{function.__name__}({{a}}), {{valid}}"), kernels=(function,),
                    write=lambda a: getattr(a.dt, name)())


OPERATORS = (
    _field("hour", "Hour", hour_of),
    _field("minute", "Minute", minute_of),
    _field("weekday", "WeekDay", weekday_of),
    _field("day", "Day", day_of),
    _field("month", "Month", month_of),
)
