"""The store's settings: ``featurestore.toml`` at the store's root, read with the standard library's ``tomllib``.

``featurestore init`` writes a commented file; every command reads it, and flags override it. Every key
is optional; a store without the file behaves as one with the defaults below.

>>> import tempfile
>>> root = Path(tempfile.mkdtemp())
>>> path = write_config(root, StoreConfig(exchange="binance", timeframe="1h"))
>>> config = read_config(root)
>>> config.exchange, config.timeframe, config.online_url(root) == f"sqlite:///{root}/online.sqlite"
('binance', '1h', True)
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from featurestore.atomic import write_bytes_atomic
from featurestore.errors import FeatureStoreError
from featurestore.timeframes import timeframe_ms

__all__ = ["CONFIG_FILE", "DEFAULT_ONLINE_STORE", "StoreConfig", "read_config", "with_overrides", "write_config"]

CONFIG_FILE = "featurestore.toml"
DEFAULT_ONLINE_STORE = "sqlite:///online.sqlite"


@dataclass(frozen=True)
class StoreConfig:
    """What ``featurestore.toml`` holds (the ``[store]`` table; ``[monitor]`` thresholds kept as given)."""

    exchange: str | None = None  # default exchange of every command (None: the only one stored)
    timeframe: str = "1m"  # default bar timeframe of ingest
    online_store: str = DEFAULT_ONLINE_STORE  # a URL; sqlite paths relative to the store's root
    definitions: tuple[str, ...] = ()  # modules `featurestore apply` applies when given none (relative to the root)
    monitor: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        timeframe_ms(self.timeframe)
        scheme, sep, rest = self.online_store.partition("://")
        if not sep or scheme not in ("sqlite", "redis", "rediss") or (scheme == "sqlite" and not rest.startswith("/")):
            raise FeatureStoreError(f"online_store must be a URL such as {DEFAULT_ONLINE_STORE!r} or "
                                    f"'redis://localhost:6379/0', got {self.online_store!r}")

    def online_url(self, root: Path) -> str:
        """``online_store`` with a relative SQLite path made absolute against the store's root."""
        scheme, _, rest = self.online_store.partition("://")
        if scheme == "sqlite" and rest.startswith("/") and not rest.startswith("//"):
            return f"sqlite:///{(root / rest[1:]).absolute()}"
        return self.online_store

    def definition_paths(self, root: Path) -> list[Path]:
        return [Path(p) if Path(p).is_absolute() else root / p for p in self.definitions]


def read_config(root: Path) -> StoreConfig:
    """The settings of the store at ``root`` (the defaults when it has no ``featurestore.toml``)."""
    path = Path(root) / CONFIG_FILE
    if not path.is_file():
        return StoreConfig()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise FeatureStoreError(f"{path} is not valid TOML: {exc}") from None
    table = data.get("store", {})
    known = {f.name for f in fields(StoreConfig)} - {"monitor"}
    unknown = sorted(set(table) - known) + sorted(f"[{t}]" for t in set(data) - {"store", "monitor"})
    if unknown:
        raise FeatureStoreError(f"{path}: unknown setting(s) {', '.join(unknown)}; known in [store]: "
                                f"{', '.join(sorted(known))}, and the [monitor] table")
    if "definitions" in table:
        if not isinstance(table["definitions"], list) or not all(isinstance(d, str) for d in table["definitions"]):
            raise FeatureStoreError(f"{path}: definitions must be a list of file paths, e.g. [\"my_views.py\"]")
        table = {**table, "definitions": tuple(table["definitions"])}
    for name in ("exchange", "timeframe", "online_store"):
        if name in table and not isinstance(table[name], str):
            raise FeatureStoreError(f"{path}: {name} must be a string, got {table[name]!r}")
    try:
        return StoreConfig(**table, monitor=dict(data.get("monitor", {})))
    except FeatureStoreError as exc:
        raise FeatureStoreError(f"{path}: {exc}") from None


def _toml_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_config(root: Path, config: StoreConfig) -> Path:
    """Write ``config`` as a commented ``featurestore.toml`` at ``root`` (atomically); return its path."""
    lines = [
        "# Settings of this feature store; every featurestore command reads them, and flags override them.",
        "",
        "[store]",
        "# Exchange whose bars the commands use by default (unset: the only exchange stored).",
        f"{'' if config.exchange else '# '}exchange = {_toml_value(config.exchange or 'binance')}",
        "# Default bar timeframe of `featurestore ingest` (1m, 5m, 1h, 4h, 1d, 1w, ...).",
        f"timeframe = {_toml_value(config.timeframe)}",
        "# The online store: sqlite:///path (relative to this directory) or sqlite:////absolute/path;",
        "# redis://host:port/db for a Redis server.",
        f"online_store = {_toml_value(config.online_store)}",
        "# Modules of FeatureView definitions that a bare `featurestore apply` registers (relative paths: to here).",
        f"definitions = {_toml_value(list(config.definitions))}",
    ]
    if config.monitor:
        lines += ["", "# Monitoring thresholds (see `featurestore monitor --help`).", "[monitor]"]
        lines += [f"{key} = {_toml_value(value)}" for key, value in config.monitor.items()]
    path = Path(root) / CONFIG_FILE
    write_bytes_atomic(("\n".join(lines) + "\n").encode(), path)
    read_config(root)  # what was written reads back
    return path


def with_overrides(config: StoreConfig, **given: Any) -> StoreConfig:
    """``config`` with every non-None value of ``given`` replacing its setting (flags override the file)."""
    return replace(config, **{k: v for k, v in given.items() if v is not None})
