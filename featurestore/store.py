"""The store directory's bars: hive-partitioned parquet, one sorted file per series and year.

Paths are ``featurestore.layout``'s (``kind=bars/exchange=<x>/timeframe=<tf>/symbol=<s>/year=<y>/bars.parquet``).
Each file holds ``ts`` and the bar's values, sorted by ``ts``, unique on ``ts``; the partition keys live
in the path only, so every hive-aware reader agrees on their type: ``pyarrow.dataset(dir,
partitioning="hive")``, ``pandas.read_parquet(dir)``, DuckDB's ``read_parquet(glob, hive_partitioning =
true)`` and ``polars.scan_parquet(dir, hive_partitioning=True)``. Files written before held the keys as
columns too; they read the same way here (``scan_partition``), and are rewritten without them by the next
write of their year.

>>> import tempfile, polars as pl
>>> from datetime import datetime, timezone
>>> from featurestore.bars import validate_bars
>>> store = Store(tempfile.mkdtemp())
>>> bars = pl.DataFrame({"symbol": ["BTC/USDT"], "ts": [datetime(2024, 1, 1, tzinfo=timezone.utc)],
...     "open": [1.0], "high": [2.0], "low": [0.5], "close": [1.5], "volume": [10.0]})
>>> store.write_bars(validate_bars(bars, "1h"), exchange="synthetic", timeframe="1h")
{'BTC/USDT': 1}
>>> store.write_bars(validate_bars(bars, "1h"), exchange="synthetic", timeframe="1h")  # idempotent
{'BTC/USDT': 0}
>>> store.scan_bars("synthetic", "1h").select("symbol", "close").collect().rows()
[('BTC/USDT', 1.5)]
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path

import polars as pl

from featurestore.atomic import remove_orphans, write_parquet_atomic
from featurestore.bars import BAR_COLUMNS, TS_DTYPE
from featurestore.config import StoreConfig, read_config
from featurestore.damaged import REPAIR, check_readable
from featurestore.errors import FeatureStoreError, StoreConflictError
from featurestore.layout import BarSeries, Layout
from featurestore.partial_bars import PARTIAL_SCHEMA, partial_frame, read_partial_bars, write_partial_bars

__all__ = ["BarSeries", "Store", "default_store_root", "scan_partition", "split_by_year"]

STORED_BAR_COLUMNS = ("exchange", "timeframe", *BAR_COLUMNS)
_FILE_COLUMNS = BAR_COLUMNS[1:]  # a bar file's columns: the series is named by its path


def default_store_root(explicit: str | os.PathLike | None = None) -> Path:
    """``--store`` if given, else ``$FEATURESTORE_HOME``, else ``./store``."""
    return Path(explicit or os.environ.get("FEATURESTORE_HOME") or "store")


class Store(Layout):
    """A store directory (its paths: ``featurestore.layout``; its settings: ``featurestore.config``).
    Construction touches nothing on disk; writes create what they need."""

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    @functools.cached_property
    def config(self) -> StoreConfig:
        """``featurestore.toml``, read once (the defaults when there is none)."""
        return read_config(self.root)

    @property
    def online_url(self) -> str:
        """The online store's URL (``featurestore.online.connect``): the config's, by default a SQLite file here."""
        return self.config.online_url(self.root)

    @property
    def online_path(self) -> Path:
        """The SQLite online store's file (when the online store is SQLite)."""
        url = self.online_url
        if not url.startswith("sqlite:///"):
            raise FeatureStoreError(f"the online store of {self.root} is {url}, not a SQLite file")
        return Path(url.removeprefix("sqlite:///"))

    @contextlib.contextmanager
    def write_lock(self) -> Iterator[None]:
        """Serialise writers across processes (readers never wait: files are replaced atomically)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    def scan_bars(self, exchange: str, timeframe: str, symbols: list[str] | None = None) -> pl.LazyFrame:
        """Lazily read the bars of one exchange and timeframe, sorted by ``(symbol, ts)``."""
        chosen = self.series(exchange=exchange, timeframe=timeframe, symbols=symbols)
        if symbols is not None:
            missing = sorted(set(symbols) - {s.symbol for s in chosen})
            if missing:
                raise FeatureStoreError(
                    f"no stored bars for {missing} on exchange {exchange!r}, timeframe {timeframe!r} in {self.root}; "
                    f"stored symbols: {[s.symbol for s in self.series(exchange=exchange, timeframe=timeframe)]}"
                )
        scans = [_scan(s, files) for s in chosen if (files := self.bar_files(s))]
        if not scans:
            return pl.LazyFrame(schema=_stored_schema())
        return pl.concat(scans)

    def scan_series(self, series: BarSeries) -> pl.LazyFrame:
        """Lazily read one stored series (names its files directly: no listing of the store)."""
        files = self.bar_files(series)
        if not files:
            raise FeatureStoreError(f"no stored bars for {series} in {self.root}")
        return _scan(series, files)

    def last_bar_ts(self, series: BarSeries) -> datetime | None:
        """Open time of the newest stored bar of the series, or None when nothing is stored."""
        files = self.bar_files(series)
        if not files:
            return None
        return _scan(series, files[-1:]).select(pl.col("ts").max()).collect().item()

    def write_bars(self, bars: pl.DataFrame, *, exchange: str, timeframe: str,
                   partial: pl.DataFrame | None = None) -> dict[str, int]:
        """Merge validated bars into the store; return the number of rows written (new or replacing) per symbol.

        Bars already stored with identical values are skipped (re-runs are idempotent). If any incoming
        bar disagrees with a stored one, or a stored file it merges with is damaged, nothing at all is
        written, unless the stored bar is recorded as built from an incomplete period
        (``featurestore.partial_bars``): the incoming bar replaces it. ``partial`` lists the incoming bars
        built from incomplete periods (``symbol`` and the record's columns): they are recorded; a recorded
        bar replaced by a complete one leaves the record. Each file is replaced atomically (a bar is
        recorded before it is written and unrecorded after); temporary files of killed writers are removed.
        """
        with self.write_lock():
            return self._merge_bars(bars, exchange=exchange, timeframe=timeframe, partial=partial)

    def check_bars(self, bars: pl.DataFrame, *, exchange: str, timeframe: str) -> dict[str, int]:
        """What ``write_bars`` would return, writing nothing: the new rows per symbol, or its conflict error."""
        return self._merge_bars(bars, exchange=exchange, timeframe=timeframe, partial=None, write=False)

    def _merge_bars(self, bars: pl.DataFrame, *, exchange: str, timeframe: str,
                    partial: pl.DataFrame | None, write: bool = True) -> dict[str, int]:
        planned: list[tuple[Path, pl.DataFrame]] = []
        records: list[tuple[BarSeries, pl.DataFrame, pl.DataFrame]] = []  # (series, while writing, after)
        new_rows: dict[str, int] = {}
        incoming = bars.with_columns(exchange=pl.lit(exchange), timeframe=pl.lit(timeframe)).select(
            STORED_BAR_COLUMNS)
        for symbol in incoming["symbol"].unique(maintain_order=True):
            series = BarSeries(exchange, timeframe, symbol)
            mine = incoming.filter(pl.col("symbol") == symbol)
            recorded = read_partial_bars(self, series)
            for year, part in split_by_year(mine):
                path = self.year_file(series, year)
                if write:
                    remove_orphans(path.parent)  # a killed writer's temporary files, also when nothing here is new
                stored = _scan(series, [path]).collect() if path.exists() else None
                fresh = part if stored is None else _to_write(stored, part, path, recorded["ts"])
                new_rows[symbol] = new_rows.get(symbol, 0) + fresh.height
                if fresh.height:
                    kept = None if stored is None else stored.join(fresh.select("ts"), on="ts", how="anti")
                    merged = fresh if kept is None else pl.concat([kept, fresh])
                    planned.append((path, merged.select(_FILE_COLUMNS).sort("ts")))
            arriving = (partial_frame([]) if partial is None else
                        partial.filter(pl.col("symbol") == symbol).select(list(PARTIAL_SCHEMA)))
            after = pl.concat([recorded.join(mine.select("ts"), on="ts", how="anti"), arriving]).sort("ts")
            if not after.equals(recorded):
                during = pl.concat([recorded.join(arriving.select("ts"), on="ts", how="anti"), arriving]).sort("ts")
                records.append((series, during, after))
        if not write:
            return new_rows
        for series, during, _ in records:
            write_partial_bars(self, series, during)
        for path, frame in planned:
            write_parquet_atomic(frame, path)
        for series, _, after in records:
            write_partial_bars(self, series, after)
        return new_rows


def _scan(series: BarSeries, files: list[Path]) -> pl.LazyFrame:
    """Files of one series, lazily, with its keys as columns (``STORED_BAR_COLUMNS``)."""
    keys = {"exchange": series.exchange, "timeframe": series.timeframe, "symbol": series.symbol}
    return scan_partition(files, keys, fix=f"{REPAIR}; `featurestore validate` lists every damaged bar file")


def scan_partition(files: Sequence[Path], keys: Mapping[str, str], *, fix: str = REPAIR) -> pl.LazyFrame:
    """Stored files of one partition, lazily, once each is known to be readable (``featurestore.damaged``),
    with the partition's ``keys`` (from the path) as leading String columns; a file that also holds them
    as columns (written before they lived in the path only) has those dropped."""
    check_readable(files, fix=fix)
    names = list(keys)
    if set(names) & set(pl.read_parquet_schema(files[0])):  # an older first file: read each file on its own
        scanned = pl.concat([pl.scan_parquet(path, hive_partitioning=False).drop(names, strict=False)
                             for path in files])
    else:  # one scan; older files later in the list have their key columns ignored
        scanned = pl.scan_parquet(files, hive_partitioning=False, extra_columns="ignore")
    return scanned.select(*(pl.lit(value, pl.String).alias(key) for key, value in keys.items()), pl.all())


def split_by_year(frame: pl.DataFrame) -> list[tuple[int, pl.DataFrame]]:
    """The rows of each calendar year of ``ts``, in order of appearance (filters: ~20x faster than group_by)."""
    if frame.is_empty():
        return []
    first, last = frame["ts"].min().year, frame["ts"].max().year
    if first == last:  # the common case, without a year per row
        return [(first, frame)]
    years = frame["ts"].dt.year()
    return [(year, frame.filter(years == year)) for year in years.unique(maintain_order=True).to_list()]


def _stored_schema() -> dict[str, pl.DataType]:
    return {"exchange": pl.String(), "timeframe": pl.String(), "symbol": pl.String(), "ts": TS_DTYPE,
            **{name: pl.Float64() for name in BAR_COLUMNS[2:]}}


def _to_write(stored: pl.DataFrame, incoming: pl.DataFrame, path: Path, replaceable: pl.Series) -> pl.DataFrame:
    """Rows of ``incoming`` not stored with the same values; raise if one disagrees with a stored row whose ``ts``
    is not ``replaceable``."""
    value_columns = list(BAR_COLUMNS[2:])
    overlap = incoming.join(stored, on="ts", how="inner", suffix="_stored")
    differs = overlap.filter(pl.any_horizontal(pl.col(c) != pl.col(f"{c}_stored") for c in value_columns))
    conflicts = differs.filter(~pl.col("ts").is_in(replaceable.implode()))
    if conflicts.height:
        row = conflicts.row(0, named=True)
        fields = ", ".join(f"{c}: stored {row[c + '_stored']} vs incoming {row[c]}"
                           for c in value_columns if row[c] != row[c + "_stored"])
        raise StoreConflictError(
            f"{conflicts.height} incoming bar(s) disagree with stored bars in {path}; first: symbol "
            f"{row['symbol']}, ts {row['ts']} ({fields}). Nothing was written."
        )
    unchanged = overlap.join(differs.select("ts"), on="ts", how="anti").select("ts")
    return incoming.join(unchanged, on="ts", how="anti")
