"""Where everything lives in a store directory, and the look-ups over what is there.

This module is the one place that spells out the store's paths; every other module asks a ``Layout``
(a ``Store`` is one)::

    <root>/
      kind=bars/exchange=<x>/timeframe=<tf>/symbol=<url-quoted>/year=<yyyy>/bars.parquet
      kind=bars/exchange=<x>/timeframe=<tf>/symbol=<url-quoted>/year=<yyyy>/delta-<first>-<last>.parquet
      kind=bars/exchange=<x>/timeframe=<tf>/symbol=<url-quoted>/partial-bars.json   bars from incomplete periods
      kind=features/view=<name>/version=<v>/exchange=<x>/symbol=<url-quoted>/year=<yyyy>/features.parquet
      kind=stream/view=<name>/version=<v>/exchange=<x>/symbol=<url-quoted>/part-<first>-<last>.parquet
      featurestore.toml              the store's settings (``featurestore.config``)
      registry/<view>.json           every version of a view ever backfilled, and the current one
      catalog.duckdb                 DuckDB views over the parquet
      online.sqlite                  the embedded online store, unless featurestore.toml names another
      signals/signals.jsonl          the signed signal audit log (live signals), and its signed head .head
      signals/replay.jsonl           the audit log of signals about past moments (replays, score --as-of)
      models/<name>/<version>/       published models, and models/<name>/production
      stream/metrics-<view>.json     the dataflow's counters
      monitor/model-<name>.json      the latest `featurestore monitor` report of a model
      monitor/consistency-<view>.json  the latest `featurestore consistency` report of a view
      .write.lock                    writers of the parquet files take turns on it

Partition values are URL-quoted (``BTC/USDT`` is ``BTC%2FUSDT``). The partition keys live in the paths
only, not in the files, so hive-aware readers (pyarrow, pandas, DuckDB, polars) agree on their types.

A year of a series is its base file ``bars.parquet`` and the delta files appended since it was last
compacted, each named by the open times (epoch ms) of its first and last bar; ``featurestore.store``
says which of them are current (``YearFiles``).

>>> import tempfile
>>> layout = Layout(tempfile.mkdtemp())
>>> layout.series_dir(BarSeries("binance", "1m", "BTC/USDT")).relative_to(layout.root).as_posix()
'kind=bars/exchange=binance/timeframe=1m/symbol=BTC%2FUSDT'
>>> layout.delta_file(BarSeries("binance", "1m", "BTC/USDT"), 2024, 1704067200000, 1704067260000).name
'delta-1704067200000-1704067260000.parquet'
>>> layout.resolve_exchange("1m", None)
Traceback (most recent call last):
...
featurestore.errors.FeatureStoreError: no 1m bars in ...; ingest some first (featurestore ingest --timeframe 1m)
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote

from featurestore.errors import FeatureStoreError

__all__ = ["BarSeries", "Delta", "Layout", "YearFiles"]

_BAR_FILE = "bars.parquet"
_DELTA = re.compile(r"^delta-(\d+)-(\d+)\.parquet$")
_FEATURE_FILE = "features.parquet"


_NAME_MAX = 255  # bytes in one directory name on the usual file systems (ext4, APFS, NTFS)


def _key(name: str, value: str) -> str:
    key = f"{name}={quote(value, safe='')}"
    if len(key.encode()) > _NAME_MAX:
        raise FeatureStoreError(f"{name} {value[:20]!r}... ({len(value)} characters) is too long to store: its "
                                f"directory name would be {len(key.encode())} bytes, over the file system's {_NAME_MAX}")
    return key


def _value(part: str) -> str:
    return unquote(part.split("=", 1)[1])


@dataclass(frozen=True, order=True)
class BarSeries:
    """One stored series of bars: the unit that is unique on ``ts``."""

    exchange: str
    timeframe: str
    symbol: str


@dataclass(frozen=True, order=True)
class Delta:
    """A delta file: bars appended to a year after its base file, ``first_ms..last_ms`` their open times."""

    first_ms: int
    last_ms: int
    path: Path


@dataclass(frozen=True)
class YearFiles:
    """The files found in one year directory of a series: its base file (None if none) and its deltas,
    ordered by first bar (superseded ones included: ``featurestore.store`` tells them apart)."""

    year: int
    base: Path | None
    deltas: tuple[Delta, ...]


def _year_files(year_dir: Path) -> YearFiles:
    base, deltas = None, []
    with os.scandir(year_dir) as entries:
        for entry in entries:
            if entry.name == _BAR_FILE:
                base = Path(entry.path)
            elif match := _DELTA.match(entry.name):
                deltas.append(Delta(int(match[1]), int(match[2]), Path(entry.path)))
    return YearFiles(int(_value(year_dir.name)), base, tuple(sorted(deltas)))


class Layout:
    """The paths of a store directory. Construction touches nothing on disk."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).absolute()

    # -- files of the whole store

    @property
    def catalog_path(self) -> Path:
        return self.root / "catalog.duckdb"

    @property
    def lock_path(self) -> Path:
        return self.root / ".write.lock"

    @property
    def config_path(self) -> Path:
        return self.root / "featurestore.toml"

    @property
    def audit_path(self) -> Path:
        """The signal audit log's default place."""
        return self.root / "signals" / "signals.jsonl"

    @property
    def replay_audit_path(self) -> Path:
        """The default audit log of replayed signals (decisions about past moments)."""
        return self.root / "signals" / "replay.jsonl"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    def registry_file(self, view_name: str) -> Path:
        return self.root / "registry" / f"{view_name}.json"

    def stream_metrics_path(self, view_name: str) -> Path:
        return self.root / "stream" / f"metrics-{view_name}.json"

    @property
    def monitor_dir(self) -> Path:
        """The latest monitoring reports."""
        return self.root / "monitor"

    def monitor_report_path(self, model_name: str) -> Path:
        return self.monitor_dir / f"model-{model_name}.json"

    def consistency_report_path(self, view_name: str) -> Path:
        return self.monitor_dir / f"consistency-{view_name}.json"

    # -- bars

    @property
    def bars_root(self) -> Path:
        return self.root / "kind=bars"

    def series_dir(self, series: BarSeries) -> Path:
        return (self.bars_root / _key("exchange", series.exchange) / _key("timeframe", series.timeframe)
                / _key("symbol", series.symbol))

    def year_file(self, series: BarSeries, year: int) -> Path:
        """The year's base file."""
        return self.series_dir(series) / f"year={year}" / _BAR_FILE

    def delta_file(self, series: BarSeries, year: int, first_ms: int, last_ms: int) -> Path:
        """A delta file of the year holding bars that open from ``first_ms`` to ``last_ms``."""
        return self.series_dir(series) / f"year={year}" / f"delta-{first_ms}-{last_ms}.parquet"

    def series_years(self, series: BarSeries) -> list[YearFiles]:
        """The series' years in order, each with every base and delta file found (years without one left out)."""
        try:
            with os.scandir(self.series_dir(series)) as entries:
                dirs = [Path(e.path) for e in entries if e.name.startswith("year=") and e.is_dir()]
        except FileNotFoundError:
            return []
        years = sorted((_year_files(d) for d in dirs), key=lambda y: y.year)
        return [y for y in years if y.base or y.deltas]

    def partial_bars_file(self, series: BarSeries) -> Path:
        """The record of the series' bars built from incomplete periods (``featurestore.partial_bars``)."""
        return self.series_dir(series) / "partial-bars.json"

    def series(self, *, exchange: str | None = None, timeframe: str | None = None,
               symbols: list[str] | None = None) -> list[BarSeries]:
        """Every stored series, optionally filtered, sorted."""
        found = [
            BarSeries(_value(path.parts[-3]), _value(path.parts[-2]), _value(path.parts[-1]))
            for path in self.bars_root.glob("exchange=*/timeframe=*/symbol=*")
            if any(path.glob("year=*/*.parquet"))
        ]
        return sorted(
            s for s in found
            if (exchange is None or s.exchange == exchange)
            and (timeframe is None or s.timeframe == timeframe)
            and (symbols is None or s.symbol in symbols)
        )

    def resolve_exchange(self, timeframe: str, exchange: str | None) -> str:
        """The exchange whose ``timeframe`` bars feed a view: the one given, or the only one stored."""
        exchanges = sorted({s.exchange for s in self.series(timeframe=timeframe)})
        if exchange is not None:
            if exchange not in exchanges:
                raise FeatureStoreError(f"no {timeframe} bars from exchange {exchange!r} in {self.root}; "
                                        f"stored: {exchanges or 'none'}")
            return exchange
        if len(exchanges) != 1:
            raise FeatureStoreError(
                f"no {timeframe} bars in {self.root}; ingest some first (featurestore ingest --timeframe {timeframe})"
                if not exchanges else f"{timeframe} bars from several exchanges ({', '.join(exchanges)}): pass --exchange")
        return exchanges[0]

    # -- feature rows (backfilled) and stream parts

    @property
    def features_root(self) -> Path:
        return self.root / "kind=features"

    def view_dir(self, view_name: str) -> Path:
        return self.features_root / f"view={view_name}"

    def version_dir(self, view_name: str, version: str) -> Path:
        return self.view_dir(view_name) / f"version={version}"

    def feature_symbol_dir(self, view_name: str, version: str, exchange: str, symbol: str) -> Path:
        return self.version_dir(view_name, version) / _key("exchange", exchange) / _key("symbol", symbol)

    def feature_year_file(self, view_name: str, version: str, exchange: str, symbol: str, year: int) -> Path:
        return self.feature_symbol_dir(view_name, version, exchange, symbol) / f"year={year}" / _FEATURE_FILE

    def feature_files(self, view_name: str, version: str, exchange: str | None = None,
                      symbols: list[str] | None = None) -> list[Path]:
        """Stored feature files of one view version (optionally one exchange and some symbols), sorted."""
        exchange_part = _key("exchange", exchange) if exchange is not None else "exchange=*"
        files = sorted(self.version_dir(view_name, version).glob(f"{exchange_part}/symbol=*/year=*/{_FEATURE_FILE}"))
        if symbols is not None:
            wanted = {_key("symbol", s) for s in symbols}
            files = [f for f in files if f.parent.parent.name in wanted]
        return files

    @staticmethod
    def feature_file_symbol(path: Path) -> str:
        """The symbol of a feature file (``feature_year_file``), from its path."""
        return _value(path.parent.parent.name)

    def feature_views(self) -> list[str]:
        """Names of the views with a directory under ``kind=features``, sorted."""
        return sorted(_value(path.name) for path in self.features_root.glob("view=*"))

    def stored_versions(self, view_name: str) -> list[str]:
        """Versions of a view with at least one stored file."""
        return sorted(_value(path.name) for path in self.view_dir(view_name).glob("version=*")
                      if any(path.rglob(_FEATURE_FILE)))

    def stored_symbols(self, view_name: str, version: str) -> list[str]:
        """Symbols with stored rows of one view version (any exchange)."""
        return sorted({_value(path.name) for path in self.version_dir(view_name, version).glob("exchange=*/symbol=*")})

    def stream_dir(self, view_name: str, version: str) -> Path:
        """Where the dataflow writes parquet parts of one view version (beside, not mixed into, the backfill)."""
        return self.root / "kind=stream" / f"view={view_name}" / f"version={version}"

    @staticmethod
    def stream_part_symbol(path: Path) -> str:
        """The symbol of a stream part (``stream_part``), from its path."""
        return _value(path.parent.name)

    def stream_part(self, view_name: str, version: str, exchange: str, symbol: str, first_ms: int,
                    last_ms: int) -> Path:
        return (self.stream_dir(view_name, version) / _key("exchange", exchange) / _key("symbol", symbol)
                / f"part-{first_ms}-{last_ms}.parquet")
