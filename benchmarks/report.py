"""The benchmark report: each figure with its baseline from the same run, its target and a verdict, in Markdown.

A benchmark's rounds give a ``Measured``: the fastest and the median round of a time (lower is better), a
throughput (higher is better), a latency percentile (lower is better), a peak memory (lower is better) or a count
(lower is better, summed over every round). A ``Line`` puts one figure beside an optional baseline and target; ``evaluate`` turns it into
table cells. Conventions, the same on every line:

- ratio = the figure's time (per bar, per call) / the baseline's, fastest round to fastest round and median
  to median: below 1 is faster than the baseline, lower is better;
- a target is on the figure itself (``Target(1e6)``: at least 1M bars/s; ``Target(50)``: at most 50 us) or on
  the ratio (``Target(2.0, of="ratio")``: at most twice the baseline's time). It is met only when both the
  fastest and the median round meet it; the verdict says which decided.

``results`` builds the run's document (what ``results.json`` holds) and ``render`` its Markdown (``results.md``);
``python benchmarks/report.py benchmarks/results.json`` renders a kept document again.

>>> measured = {"ours": Measured("our query", "time", 1.0, 1.2, 5), "theirs": Measured("bare", "time", 2.0, 2.1, 5)}
>>> row = evaluate(Line("ours", "theirs", Target(0.5, of="ratio")), measured)
>>> row["figure"], row["ratio"], row["target"], row["verdict"]
('1.00 s (1.20 s), 5 rounds', '0.50x (0.57x)', 'ratio <= 0.5', 'MISSED by the median (the fastest met it)')
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Literal

__all__ = ["Line", "Measured", "Target", "evaluate", "machine", "render", "results"]

Kind = Literal["time", "throughput", "latency", "memory", "count"]
_BETTER = {"time": "lower", "throughput": "higher", "latency": "lower", "memory": "lower", "count": "lower"}


@dataclass(frozen=True)
class Measured:
    """One figure of one benchmark: its fastest and median round (time in s, throughput in ``unit``/s, latency
    in us, memory in bytes; a count: its total over every round, in both fields)."""

    label: str
    kind: Kind
    fastest: float
    median: float
    rounds: int
    unit: str = "bars"

    @classmethod
    def of_rounds(cls, label: str, kind: Kind, values: list[float], unit: str = "bars") -> Measured:
        best = max(values) if kind == "throughput" else min(values)
        return cls(label, kind, best, statistics.median(values), len(values), unit)

    def time_per_unit(self, fastest: bool) -> float:
        value = self.fastest if fastest else self.median
        return 1 / value if self.kind == "throughput" else value

    def text(self, value: float) -> str:
        if self.kind == "throughput":
            return f"{value / 1e6:.2f}M {self.unit}/s" if value >= 1e6 else f"{value / 1e3:.1f}k {self.unit}/s"
        if self.kind == "latency":
            return f"{value / 1e3:.2f} ms" if value >= 1000 else f"{value:.1f} us"
        if self.kind == "count":
            return f"{value:g}"
        if self.kind == "memory":
            return f"{value / 2**20:.0f} MiB"
        return f"{value:.2f} s" if value >= 1 else f"{value * 1e3:.1f} ms"

    def cell(self) -> str:
        if self.kind == "count":
            return f"{self.text(self.fastest)} over {self.rounds} round(s)"
        return f"{self.text(self.fastest)} ({self.text(self.median)}), {self.rounds} round{'s' * (self.rounds > 1)}"


@dataclass(frozen=True)
class Target:
    """At least (throughput) or at most (time, latency, memory, count) ``limit`` for the figure, or at most ``limit``
    for its time ratio to the baseline (``of="ratio"``); ``why`` says what the limit means, if not obvious."""

    limit: float
    of: Literal["figure", "ratio"] = "figure"
    why: str = ""


@dataclass(frozen=True)
class Line:
    """A figure (a key of the measured figures), optionally beside a baseline key and a target."""

    key: str
    baseline: str | None = None
    target: Target | None = None


def _meets(target: Target, figure: Measured, ratio: float | None, value: float) -> bool:
    if target.of == "ratio":
        return ratio <= target.limit
    return value >= target.limit if figure.kind == "throughput" else value <= target.limit


def _verdict(fastest_ok: bool, median_ok: bool, kind: Kind) -> str:
    if kind == "count":
        return "met (every round)" if fastest_ok else "MISSED (over all rounds)"
    if fastest_ok and median_ok:
        return "met (fastest and median)"
    if not fastest_ok and not median_ok:
        return "MISSED (fastest and median)"
    return "MISSED by the median (the fastest met it)" if fastest_ok else "MISSED by the fastest (the median met it)"


def _target_text(target: Target, figure: Measured) -> str:
    if target.of == "ratio":
        text = f"ratio <= {target.limit:.3g}"
    else:
        sign = ">=" if figure.kind == "throughput" else "<="
        text = f"{sign} {figure.text(target.limit)}"
    return f"{text} ({target.why})" if target.why else text


def evaluate(line: Line, measured: dict[str, Measured]) -> dict[str, str] | None:
    """The table cells of ``line`` (None when its figure or its baseline was not measured in this run)."""
    figure = measured.get(line.key)
    baseline = measured.get(line.baseline) if line.baseline else None
    if figure is None or (line.baseline and baseline is None):
        return None
    ratios = [figure.time_per_unit(f) / baseline.time_per_unit(f) for f in (True, False)] if baseline else [None] * 2
    row = {"what": figure.label, "figure": figure.cell(), "better": _BETTER[figure.kind],
           "baseline": f"{baseline.label}: {baseline.cell()}" if baseline else "",
           "ratio": f"{ratios[0]:.2f}x ({ratios[1]:.2f}x)" if baseline else "", "target": "", "verdict": ""}
    if line.target:
        ok = [_meets(line.target, figure, ratio, value) for ratio, value in zip(ratios, (figure.fastest, figure.median),
                                                                                  strict=True)]
        row.update(target=_target_text(line.target, figure), verdict=_verdict(*ok, figure.kind))
    return row


_COLUMNS = ("what", "figure: fastest (median)", "better", "baseline, same run: fastest (median)",
            "ratio: fastest (median)", "target", "verdict")


def _table(rows: list[dict[str, str]]) -> list[str]:
    lines = ["| " + " | ".join(_COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
    for row in rows:
        cells = [row[k] or "-" for k in ("what", "figure", "better", "baseline", "ratio", "target", "verdict")]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return lines


def machine() -> dict[str, object]:
    """What the numbers were measured on (this process's view of the machine)."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    meminfo = Path("/proc/meminfo")
    mem_kb = int(meminfo.read_text().split()[1]) if meminfo.exists() else 0
    return {"platform": platform.platform(), "cpu": cpu, "logical_cpus": os.cpu_count(),
            "usable_cpus": len(os.sched_getaffinity(0)), "memory_gib": round(mem_kb / 2**20, 1),
            "python": platform.python_version(),
            "packages": {name: version(name) for name in ("polars", "duckdb", "bytewax", "lightgbm", "onnxruntime")},
            "load_average": [round(x, 2) for x in os.getloadavg()]}


def render(results: dict) -> str:
    """``results.md`` from the ``results.json`` document."""
    m = results["machine"]
    packages = ", ".join(f"{name} {v}" for name, v in m["packages"].items())
    lines = [
        "# Benchmark results", "",
        f"`make bench` (BENCH_SCALE={results['bench_scale']:g}), {results['date']}; {m['platform']}, {m['cpu']}, "
        f"{m['usable_cpus']} usable of {m['logical_cpus']} logical CPUs, {m['memory_gib']} GiB; Python {m['python']}, "
        f"{packages}. Load average (1 min) {results['load_before'][0]} before the run, {m['load_average'][0]} after.",
        "",
        "Each figure: the fastest round, the median round in parentheses. A baseline is measured in the same run on "
        "the same data. ratio = the figure's time (per bar, per call) / the baseline's: below 1 is faster than the "
        "baseline, lower is better. A target is met only when both the fastest and the median round meet it; the "
        "verdict says which decided.", "",
        "## Headline figures and targets (the README's table)", "", *_table(results["headline"]), "",
        "## Every comparison", "", *_table(results["comparisons"]), "",
    ]
    if results["notes"]:
        lines += ["## Details printed by the benchmarks", "", "```", *results["notes"], "```", ""]
    return "\n".join(lines)


def results(*, measured: dict[str, Measured], headline: tuple[Line, ...], comparisons: tuple[tuple[str, str], ...],
            notes: list[str], bench_scale: float, load_before: list[float], started: datetime) -> dict:
    """The run's document: date, machine, every measured figure, the evaluated tables and the notes."""
    rows = [evaluate(line, measured) for line in headline]
    compared = [evaluate(Line(key, baseline), measured) for key, baseline in comparisons]
    return {
        "date": started.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC"), "bench_scale": bench_scale,
        "machine": machine(), "load_before": load_before,
        "measured": {key: asdict(m) for key, m in measured.items()},
        "headline": [r for r in rows if r], "comparisons": [r for r in compared if r], "notes": notes,
    }


if __name__ == "__main__":
    print(render(json.loads(Path(sys.argv[1]).read_text())), end="")
