"""DuckDB's errors as ``featurestore sql`` reports them: one line, naming the file or view and the fix.

>>> one_line('Parser Error: syntax error at or near "SELEC"\\n\\nLINE 1: SELEC 1\\n        ^')
'Parser Error: syntax error at or near "SELEC" (LINE 1: SELEC 1)'
>>> print(missing_view("bars", [], Path("/data/store")))
the store /data/store (the directory does not exist) has no bars and no backfilled features yet, so no SQL views (asked for bars); ingest bars first: featurestore ingest --store /data/store
>>> print(missing_view("features_reserch", ["bars", "features_research"], Path("/data/store")))
no view features_reserch in the store /data/store; did you mean features_research? (views: bars, features_research)
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import duckdb

from featurestore.errors import SqlError

__all__ = ["first_failing", "missing_view", "one_line", "sql_error"]

_MISSING_TABLE = re.compile(r"Table with name (.+?) does not exist")
_QUOTED_PATH = re.compile(r'"([^"]*)"')


def one_line(message: str) -> str:
    """DuckDB's message on one line: the first line, then the ``LINE n:`` context in parentheses."""
    lines = [line.strip() for line in message.splitlines() if line.strip() and set(line.strip()) != {"^"}]
    context = [line for line in lines if line.startswith("LINE ")]
    text = " ".join(line for line in lines if not line.startswith("LINE "))
    return f"{text} ({context[0]})" if context else text


def first_failing(names: Iterable[str], attempt: Callable[[str], object],
                  errors: tuple[type[BaseException], ...]) -> tuple[str, BaseException] | None:
    """The first of ``names`` for which ``attempt(name)`` raises one of ``errors``, with that error (or None):
    which column of a result cannot be converted or written.

    >>> first_failing(["a", "b"], lambda name: int(name == "b") / 0 if name == "b" else 1, (ZeroDivisionError,))
    ('b', ZeroDivisionError('division by zero'))
    """
    for name in names:
        try:
            attempt(name)
        except errors as error:
            return name, error
    return None


def missing_view(name: str, views: Sequence[str], root: Path) -> str:
    """What to say when a statement names a table the store has no view for."""
    ingest = f"featurestore ingest --store {root}"
    if not views:
        where = "" if root.is_dir() else " (the directory does not exist)"
        return (f"the store {root}{where} has no bars and no backfilled features yet, so no SQL views "
                f"(asked for {name}); ingest bars first: {ingest}")
    listed = f"(views: {', '.join(views)})"
    if name == "bars":
        return f"the store {root} has no bars yet; ingest some first: {ingest} {listed}"
    close = difflib.get_close_matches(name, views, n=1)
    if close:
        return f"no view {name} in the store {root}; did you mean {close[0]}? {listed}"
    if name.startswith("features_"):
        view = name.removeprefix("features_").split("__")[0]
        return (f"no view {name} in the store {root}: {view} has no backfilled rows here "
                f"(featurestore backfill --view {view} --store {root}) {listed}")
    return f"no table or view {name} in the store {root} {listed}"


def sql_error(exc: duckdb.Error, views: Sequence[str], unreadable: Mapping[str, str], root: Path) -> SqlError:
    """``exc``, raised running a statement over the store at ``root`` with ``views`` (and the ``unreadable``
    ones: name -> why), as a ``SqlError``."""
    message = str(exc)
    if isinstance(exc, duckdb.PermissionException):
        path = _QUOTED_PATH.search(message)
        what = f'it cannot open "{path.group(1)}"' if path else one_line(message)
        return SqlError(f"refused: featurestore sql reads only the files of the store {root}; {what}")
    missing = _MISSING_TABLE.search(message)
    if isinstance(exc, duckdb.CatalogException) and missing:
        name = missing.group(1)
        if name in unreadable:
            return SqlError(f"SQL error: view {name} cannot be read: {unreadable[name]}")
        return SqlError(f"SQL error: {missing_view(name, views, root)}")
    return SqlError(f"SQL error: {one_line(message)}")
