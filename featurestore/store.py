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
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import polars as pl

from featurestore.atomic import remove_orphans, write_parquet_atomic
from featurestore.bars import BAR_COLUMNS, TS_DTYPE
from featurestore.config import StoreConfig, read_config
from featurestore.damaged import REPAIR, check_readable, read_footer
from featurestore.errors import DamagedFileError, FeatureStoreError, StoreConflictError
from featurestore.layout import BarSeries, Delta, Layout, YearFiles
from featurestore.partial_bars import PARTIAL_SCHEMA, partial_frame, read_partial_bars, write_partial_bars
from featurestore.timeframes import epoch_ms, from_epoch_ms

__all__ = ["MAX_DELTAS", "BarSeries", "CurrentYear", "Store", "default_store_root", "scan_partition", "split_by_year"]

#: A year's delta files are merged into one when an append would make more (bounds the files a reader opens).
MAX_DELTAS = 32
_BAR_FIX = f"{REPAIR}; `featurestore validate` lists every damaged bar file"  # what to do about a damaged bar file

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

    def year_files(self, series: BarSeries) -> list[CurrentYear]:
        """The series' years in order, each with its current files (``CurrentYear``)."""
        return [_current(found) for found in self.series_years(series)]

    def bar_files(self, series: BarSeries) -> list[Path]:
        """The series' current files in time order (per year: the base file, then its deltas)."""
        return [path for year in self.year_files(series) for path in year.paths]

    def scan_bars(self, exchange: str, timeframe: str, symbols: list[str] | None = None) -> pl.LazyFrame:
        """Lazily read the bars of one exchange and timeframe, sorted by ``(symbol, ts)``; the files are the
        ones current when this is called (``read_series`` also survives a concurrent compaction)."""
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

    def read_series(self, series: BarSeries, columns: Sequence[str] | None = None) -> pl.DataFrame:
        """One stored series, read now (``columns``: which). Files replaced while they are read (a compaction, a
        merge of deltas, a rewritten year) are noticed by comparing the files before and after; the read is then
        done again while writers wait (a shared lock): the result is the series before or after each write,
        never a mix."""
        try:
            files = self.bar_files(series)
            before = _identities(files)
            frame = _read(series, files, columns)
            if _identities(files) == before and self.bar_files(series) == files:
                return frame
        except (OSError, pl.exceptions.ComputeError, DamagedFileError):
            pass  # read again while no writer runs: the error shows again if it is not a writer's doing
        with self._read_lock():
            return _read(series, self.bar_files(series), columns)

    @contextlib.contextmanager
    def _read_lock(self) -> Iterator[None]:
        """Keep writers out (``write_lock``) while held; several readers may hold it at once."""
        try:
            handle = open(self.lock_path)  # noqa: SIM115 - closed below
        except FileNotFoundError:  # no writer ever ran here
            yield
            return
        with handle:
            fcntl.flock(handle, fcntl.LOCK_SH)
            yield

    def last_bar_ts(self, series: BarSeries) -> datetime | None:
        """Open time of the newest stored bar of the series, or None when nothing is stored."""
        years = self.year_files(series)
        last_ms = years[-1].last_ms if years else None
        return None if last_ms is None else from_epoch_ms(last_ms)

    def write_bars(self, bars: pl.DataFrame, *, exchange: str, timeframe: str,
                   partial: pl.DataFrame | None = None) -> dict[str, int]:
        """Merge validated bars into the store; return the number of rows written (new or replacing) per symbol.

        Bars already stored with identical values are skipped (re-runs are idempotent). If any incoming
        bar disagrees with a stored one, or a stored file it merges with is damaged, nothing at all is
        written, unless the stored bar is recorded as built from an incomplete period
        (``featurestore.partial_bars``): the incoming bar replaces it. ``partial`` lists the incoming bars
        built from incomplete periods (``symbol`` and the record's columns): they are recorded; a recorded
        bar replaced by a complete one leaves the record.

        Bars newer than every stored bar of their year are appended as a delta file: the cost grows with the
        new bars, not with what is stored (only the stored bars in the incoming time range are read, to compare).
        A year's deltas are merged into one delta when there would be more than ``MAX_DELTAS``; bars that fill
        a gap or replace a stored bar rewrite the year (base and deltas into a new base), as ``compact`` does.
        Each file is replaced atomically (a bar is recorded before it is written and unrecorded after);
        temporary files of killed writers, and files a killed compaction left superseded, are removed.
        """
        with self.write_lock():
            return self._merge_bars(bars, exchange=exchange, timeframe=timeframe, partial=partial)

    def check_bars(self, bars: pl.DataFrame, *, exchange: str, timeframe: str) -> dict[str, int]:
        """What ``write_bars`` would return, writing nothing: the new rows per symbol, or its conflict error."""
        return self._merge_bars(bars, exchange=exchange, timeframe=timeframe, partial=None, write=False)

    def compact(self, series: BarSeries) -> int:
        """Fold every year's delta files into its base file; return the number of delta files folded.

        Idempotent (a year without deltas is left as it is). A reader sees the year before or after: the new
        base is renamed into place before the deltas it holds are removed, and until they are, the current
        files (``CurrentYear``) leave them out, as they do after a compaction killed between the two steps.
        """
        with self.write_lock():
            folded = 0
            for found in self.series_years(series):
                year = _current(found)
                if year.deltas or year.superseded:
                    if year.deltas:
                        bars = _scan(series, year.paths).select(_FILE_COLUMNS).collect()
                        write_parquet_atomic(bars, self.year_file(series, year.year))
                    _remove([*(delta.path for delta in year.deltas), *year.superseded])
                    folded += len(year.deltas)
            return folded

    def _merge_bars(self, bars: pl.DataFrame, *, exchange: str, timeframe: str,
                    partial: pl.DataFrame | None, write: bool = True) -> dict[str, int]:
        planned: list[_Write] = []
        records: list[tuple[BarSeries, pl.DataFrame, pl.DataFrame]] = []  # (series, while writing, after)
        new_rows: dict[str, int] = {}
        incoming = bars.with_columns(exchange=pl.lit(exchange), timeframe=pl.lit(timeframe)).select(
            STORED_BAR_COLUMNS)
        for symbol in incoming["symbol"].unique(maintain_order=True):
            series = BarSeries(exchange, timeframe, symbol)
            mine = incoming.filter(pl.col("symbol") == symbol)
            recorded = read_partial_bars(self, series)
            years = {found.year: _current(found) for found in self.series_years(series)}
            for year_number, part in split_by_year(mine):
                year = years.get(year_number, CurrentYear(year_number, None))
                if write:
                    remove_orphans(self.year_file(series, year_number).parent)  # also when nothing here is new
                    _remove(year.superseded)
                fresh = self._fresh(series, year, part, recorded["ts"])
                new_rows[symbol] = new_rows.get(symbol, 0) + fresh.height
                if fresh.height:
                    planned.append(self._plan(series, year, fresh.select(_FILE_COLUMNS).sort("ts")))
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
        for write_ in planned:
            write_parquet_atomic(write_.frame, write_.path)
            _remove(write_.replaced)
        for series, _, after in records:
            write_partial_bars(self, series, after)
        return new_rows

    def _fresh(self, series: BarSeries, year: CurrentYear, part: pl.DataFrame, replaceable: pl.Series) -> pl.DataFrame:
        """The rows of ``part`` not stored in ``year`` with the same values (reads only the stored rows in
        ``part``'s time range, none when it is all newer); raises on a conflict."""
        if year.last_ms is None or epoch_ms(part["ts"].min()) > year.last_ms:
            return part
        first, last = part["ts"].min(), part["ts"].max()
        stored = _scan(series, year.paths).filter(pl.col("ts").is_between(first, last)).collect()
        return _to_write(stored, part, year.paths[0].parent, replaceable)

    def _plan(self, series: BarSeries, year: CurrentYear, fresh: pl.DataFrame) -> _Write:
        """How ``fresh`` bars reach the year: a new base, a delta, one delta merged from all, or a rewritten base."""
        first_ms, last_ms = epoch_ms(fresh["ts"][0]), epoch_ms(fresh["ts"][-1])
        if year.last_ms is None:
            return _Write(self.year_file(series, year.year), fresh, ())
        if first_ms > year.last_ms and len(year.deltas) < MAX_DELTAS:
            return _Write(self.delta_file(series, year.year, first_ms, last_ms), fresh, ())
        if first_ms > year.last_ms:
            merged = [delta.path for delta in year.deltas]
            stored = _scan(series, merged).select(_FILE_COLUMNS).collect()
            path = self.delta_file(series, year.year, year.deltas[0].first_ms, last_ms)
            return _Write(path, pl.concat([stored, fresh]), tuple(merged))
        stored = _scan(series, year.paths).select(_FILE_COLUMNS).collect()
        kept = stored.join(fresh.select("ts"), on="ts", how="anti")
        return _Write(self.year_file(series, year.year), pl.concat([kept, fresh]).sort("ts"),
                      tuple(delta.path for delta in year.deltas))


def _scan(series: BarSeries, files: list[Path]) -> pl.LazyFrame:
    """Files of one series, lazily, with its keys as columns (``STORED_BAR_COLUMNS``)."""
    keys = {"exchange": series.exchange, "timeframe": series.timeframe, "symbol": series.symbol}
    return scan_partition(files, keys, fix=_BAR_FIX)


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


@dataclass(frozen=True)
class CurrentYear:
    """One year of a series as readers see it: the base file, the current deltas in time order, and the files
    superseded by a compaction or a merge of deltas that have not been removed yet (``current_year``)."""

    year: int
    base: Path | None
    deltas: tuple[Delta, ...] = ()
    superseded: tuple[Path, ...] = ()

    @property
    def paths(self) -> list[Path]:
        return ([self.base] if self.base else []) + [delta.path for delta in self.deltas]

    @functools.cached_property
    def last_ms(self) -> int | None:
        """Open time (epoch ms) of the year's newest bar (None without files): a delta's name, else the base's footer."""
        if self.deltas:
            return self.deltas[-1].last_ms
        return None if self.base is None else _file_last_ms(self.base)


@dataclass(frozen=True)
class _Write:
    path: Path
    frame: pl.DataFrame
    replaced: tuple[Path, ...]  # files whose bars ``frame`` holds: removed once it is in place


def _current(found: YearFiles) -> CurrentYear:
    """Which files of a year are current: a delta is superseded when the base already holds its bars (a
    compaction renamed the base into place but was not done removing the deltas) or when another delta spans
    it (a merge of deltas, likewise). Only the footer of a base with deltas is read."""
    if not found.deltas:
        return CurrentYear(found.year, found.base)
    try:
        base_last = _file_last_ms(found.base) if found.base is not None else None
    except DamagedFileError:  # every delta stays current; reading the year raises the error, naming the file
        base_last = None
    deltas: list[Delta] = []
    superseded: list[Path] = []
    for delta in sorted(found.deltas, key=lambda d: (d.first_ms, -d.last_ms)):
        if (base_last is not None and delta.first_ms <= base_last) or (deltas and delta.last_ms <= deltas[-1].last_ms):
            superseded.append(delta.path)
        else:
            deltas.append(delta)
    return CurrentYear(found.year, found.base, tuple(deltas), tuple(superseded))


def _file_last_ms(path: Path) -> int | None:
    """Open time (epoch ms) of the newest bar of a bar file, from its footer's statistics (no data read)."""
    metadata = read_footer(path, fix=_BAR_FIX)
    column = metadata.schema.names.index("ts")
    newest = None
    for index in range(metadata.num_row_groups):
        statistics = metadata.row_group(index).column(column).statistics
        if statistics is None or not statistics.has_min_max:  # written without statistics: read the column
            return epoch_ms(pl.scan_parquet(path).select(pl.col("ts").max()).collect().item())
        newest = statistics.max if newest is None else max(newest, statistics.max)
    return None if newest is None else epoch_ms(newest)


def _read(series: BarSeries, files: list[Path], columns: Sequence[str] | None) -> pl.DataFrame:
    if not files:
        raise FeatureStoreError(f"no stored bars for {series}")
    scan = _scan(series, files)
    return (scan if columns is None else scan.select(columns)).collect()


def _identities(files: Sequence[Path]) -> list[tuple[int, int] | None]:
    """Which file each path names now (inode and change time; None when gone): a replaced file differs."""
    found: list[tuple[int, int] | None] = []
    for path in files:
        try:
            status = path.stat()
        except FileNotFoundError:
            found.append(None)
        else:
            found.append((status.st_ino, status.st_ctime_ns))
    return found


def _remove(paths: Sequence[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


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
