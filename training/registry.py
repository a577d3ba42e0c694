"""Model artifacts and the model registry: ``<models_root>/<name>/<version>/`` plus a ``production`` pointer.

Each version directory holds ``model.onnx``, ``model.txt`` (LightGBM's native model), ``meta.json`` and
``features.json`` (``training.artifact``: one ``ModelMeta`` writes and reads them) and the evaluation
(``report.json``, ``equity.png``, ``importance.png``). A version is written in a hidden staging directory
and renamed into place whole, so a reader never sees half of one.
``<models_root>/<name>/production`` is a small JSON pointer replaced atomically by ``promote``.

Versions are deterministic: ``model_version`` hashes the data fingerprint with everything that decides
the model (parameters, features, label, library versions). Training again on the same data gives the
same version and identical model bytes; publishing it again keeps the stored one.

>>> import tempfile, pathlib
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> with publish(root, "demo", "v1") as staging:
...     _ = (staging / "meta.json").write_text('{"trained_at": "2024-01-01T00:00:00+00:00"}')
>>> promote(root, "demo", "v1"); production_version(root, "demo")
'v1'
>>> [(m.name, m.version, m.production) for m in list_models(root)]
[('demo', 'v1', True)]
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from featurestore.atomic import write_bytes_atomic
from featurestore.errors import ModelRegistryError
from featurestore.store import Store
from training.artifact import ModelMeta

__all__ = ["ModelVersion", "list_models", "load_meta", "model_version", "models_root", "production_version",
           "promote", "publish", "version_path"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_POINTER = "production"


def models_root(store: Store, override: str | os.PathLike | None = None) -> Path:
    """``override`` (``--models DIR``) or ``<store>/models``."""
    return Path(override).absolute() if override is not None else store.models_dir


def _check(kind: str, value: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value) or value == _POINTER:
        raise ModelRegistryError(f"model {kind} {value!r} must be letters, digits, '_', '.', '-' (not starting with "
                                 f"a symbol, not {_POINTER!r})")
    return value


def model_version(fingerprint: str, settings: Mapping[str, Any]) -> str:
    """12 hex digits of sha256 over the data fingerprint and the canonical JSON of ``settings``."""
    canonical = json.dumps({"data": fingerprint, "settings": settings}, sort_keys=True, separators=(",", ":"),
                           default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


@contextlib.contextmanager
def publish(root: Path, name: str, version: str) -> Iterator[Path]:
    """Yield an empty staging directory; on success it becomes ``<root>/<name>/<version>`` in one rename.

    If that version exists already (same data and settings), the staged files are discarded and the
    stored version is kept. On an exception nothing is published.
    """
    parent = Path(root) / _check("name", name)
    parent.mkdir(parents=True, exist_ok=True)
    staging = parent / f".{_check('version', version)}.{os.getpid()}.{secrets.token_hex(4)}.staging"
    staging.mkdir()  # with the umask, as every directory of the store (tempfile.mkdtemp would force 0700)
    try:
        yield staging
        final = parent / version
        if not final.exists():
            with contextlib.suppress(OSError):
                os.rename(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@dataclass(frozen=True)
class ModelVersion:
    """One stored model version."""

    name: str
    version: str
    path: Path
    trained_at: str | None
    production: bool


def production_version(root: Path, name: str) -> str | None:
    """The version the ``production`` pointer names, or None."""
    pointer = Path(root) / name / _POINTER
    return json.loads(pointer.read_text())["version"] if pointer.is_file() else None


def version_path(root: Path, name: str, version: str) -> Path:
    """``<root>/<name>/<version>``, or a ``ModelRegistryError`` listing what is stored when it holds no model."""
    path = Path(root) / name / version
    if not (path / "meta.json").is_file():
        raise ModelRegistryError(f"no model {name!r} version {version!r} under {root}" + _known(root, name))
    return path


def load_meta(root: Path, name: str, version: str) -> ModelMeta:
    """The stored version's ``meta.json`` (``training.artifact.ModelMeta``)."""
    return ModelMeta.read(version_path(root, name, version))


def _known(root: Path, name: str) -> str:
    versions = [m.version for m in list_models(root, name)]
    if versions:
        return f"; stored versions of {name!r}: {', '.join(versions)}"
    names = sorted({m.name for m in list_models(root)})
    return f"; stored models: {', '.join(names)}" if names else "; no models are stored there (run `featurestore train`)"


def list_models(root: Path, name: str | None = None) -> list[ModelVersion]:
    """Every stored version (of ``name``), by name then training time."""
    root = Path(root)
    found = []
    for meta in sorted(root.glob(f"{name or '*'}/*/meta.json")):
        model, version = meta.parent.parent.name, meta.parent.name
        if model.startswith(".") or version.startswith("."):
            continue
        try:
            moment = ModelMeta.read(meta.parent).trained_at
        except (OSError, ModelRegistryError):  # listed all the same: `models list` shows what is there
            moment = None
        trained_at = None if moment is None else moment.isoformat()
        found.append(ModelVersion(model, version, meta.parent, trained_at,
                                  production_version(root, model) == version))
    return sorted(found, key=lambda m: (m.name, m.trained_at or "", m.version))


def promote(root: Path, name: str, version: str) -> None:
    """Point ``<root>/<name>/production`` at ``version`` (atomic replace); the version must exist."""
    version_path(root, _check("name", name), _check("version", version))
    payload = json.dumps({"name": name, "version": version}, indent=1).encode()
    write_bytes_atomic(payload, Path(root) / name / _POINTER)
