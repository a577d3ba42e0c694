"""Where a benchmarked run's time goes: timers around phases (library functions wrapped, never changed) and a table.

>>> clock = PhaseClock()
>>> with clock.phase("read"):
...     pass
>>> lines = phase_table(clock, [("read", "reading"), ("  parse", "part of read")], total=1.0, other="the rest")
>>> [line.split()[0] for line in lines]
['read', 'parse', 'other']
"""

from __future__ import annotations

import cProfile
import functools
import io
import pstats
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import polars as pl

__all__ = ["PhaseClock", "TimedLazy", "phase_table", "run_profiled"]


class PhaseClock:
    """Seconds spent per named phase, accumulated over calls."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start

    def wrap(self, name: str, function: Callable) -> Callable:
        @functools.wraps(function)
        def timed(*args, **kwargs):
            with self.phase(name):
                return function(*args, **kwargs)

        return timed


class TimedLazy:
    """A ``LazyFrame`` whose ``collect`` (the actual read) is timed as ``phase``; derived frames stay timed."""

    def __init__(self, frame: pl.LazyFrame, clock: PhaseClock, phase: str) -> None:
        self._frame, self._clock, self._phase = frame, clock, phase

    def collect(self, *args, **kwargs) -> pl.DataFrame:
        with self._clock.phase(self._phase):
            return self._frame.collect(*args, **kwargs)

    def __getattr__(self, name: str):
        attribute = getattr(self._frame, name)
        if not callable(attribute):
            return attribute

        def derived(*args, **kwargs):
            out = attribute(*args, **kwargs)
            return TimedLazy(out, self._clock, self._phase) if isinstance(out, pl.LazyFrame) else out

        return derived


def phase_table(clock: PhaseClock, phases: Sequence[tuple[str, str]], *, total: float, other: str,
                overlapping: Sequence[str] = (), stats: pstats.Stats | None = None) -> list[str]:
    """One line per (phase, what it covers), then ``other`` = ``total`` minus the top-level phases. Indented
    phases are part of the one above; ``overlapping`` phases run in another thread (not subtracted). With
    ``stats`` (``run_profiled``'s), a last line with the top functions by own time."""
    lines, accounted = [], 0.0
    for phase, covers in phases:
        seconds = clock.seconds.get(phase, 0.0)
        accounted += 0.0 if phase.startswith(" ") or phase in overlapping else seconds
        lines.append(f"  {phase:<24} {seconds:6.2f} s  {seconds / total:6.1%}  {covers}")
    rest = total - accounted
    lines.append(f"  {'other':<24} {rest:6.2f} s  {rest / total:6.1%}  {other}")
    return lines + ([top_by_own_time(stats)] if stats else [])


def run_profiled(call: Callable[[], object]) -> tuple[float, pstats.Stats]:
    """Run ``call`` under cProfile (this thread only); print its top functions; return (seconds, stats)."""
    profile = cProfile.Profile()
    start = time.perf_counter()
    profile.enable()
    call()
    profile.disable()
    total = time.perf_counter() - start
    top = io.StringIO()
    stats = pstats.Stats(profile, stream=top)
    stats.sort_stats("tottime").print_stats(8)
    print(top.getvalue())
    return total, stats


def top_by_own_time(stats: pstats.Stats, count: int = 5) -> str:
    """The ``count`` functions with the most own time in a cProfile run, on one line."""
    def name(key: tuple[str, int, str]) -> str:
        filename, line, function = key
        return function if filename == "~" else f"{Path(filename).name}:{line}({function})"

    ranked = sorted(stats.stats.items(), key=lambda item: -item[1][2])[:count]
    return "  cProfile, top by own time: " + "; ".join(f"{name(key)} {entry[2]:.2f} s x{entry[1]}" for key, entry in ranked)
