"""The one statement ``featurestore sql`` runs: a read-only SELECT, or an EXPLAIN of one.

``checked_statement`` returns the text to execute. For an EXPLAIN that is rebuilt from what was checked
(``EXPLAIN``, ``ANALYZE``, the options and the explained SELECT), so whatever the comments around the
keywords, DuckDB runs exactly the statement that was checked (EXPLAIN ANALYZE executes it).

>>> checked_statement("FROM bars LIMIT 1")
'FROM bars LIMIT 1'
>>> print(checked_statement("/* why */ explain analyze -- a note\\n SELECT 1"))
EXPLAIN ANALYZE
SELECT 1
>>> checked_statement("EXPLAIN ANALYZE COPY (SELECT 1) TO 'x.csv'")
Traceback (most recent call last):
...
featurestore.errors.SqlError: refused: the offline store is read-only through SQL, and EXPLAIN explains a COPY statement; only SELECT (incl. WITH, DESCRIBE, SHOW) and EXPLAIN of a SELECT are allowed
"""

from __future__ import annotations

import re

import duckdb

from featurestore.errors import SqlError
from featurestore.sql_errors import one_line

__all__ = ["checked_statement"]

_GAP = re.compile(r"(?:\s+|--[^\n]*|/\*.*?\*/)*", re.DOTALL)  # whitespace and comments between keywords
_EXPLAIN = re.compile(r"EXPLAIN\b", re.IGNORECASE)
_ANALYZE = re.compile(r"ANALY[SZ]E\b", re.IGNORECASE)
_OPTIONS = re.compile(r"\(\s*\w+(?:\s+\w+)?(?:\s*,\s*\w+(?:\s+\w+)?)*\s*\)")  # (FORMAT json), no comments


def _one_statement(query: str) -> duckdb.Statement:
    try:
        statements = duckdb.extract_statements(query)
    except duckdb.Error as exc:
        raise SqlError(f"SQL error: {one_line(str(exc))}") from None
    if len(statements) != 1:
        raise SqlError(f"refused: exactly one read-only SQL statement at a time, got {len(statements)}")
    return statements[0]


def _refused(kind: str) -> SqlError:
    return SqlError(f"refused: the offline store is read-only through SQL, and {kind} statement; only SELECT "
                    "(incl. WITH, DESCRIBE, SHOW) and EXPLAIN of a SELECT are allowed")


def _explain(query: str) -> str:
    """``EXPLAIN [ANALYZE] [(options)] <select>`` rebuilt from ``query``, its SELECT checked."""
    words = []
    position = 0
    for token in (_EXPLAIN, _ANALYZE, _OPTIONS):
        position = _GAP.match(query, position).end()
        found = token.match(query, position)
        if found:
            words.append(found.group(0).upper() if token is not _OPTIONS else found.group(0))
            position = found.end()
        elif token is _EXPLAIN:
            raise SqlError("refused: cannot tell which statement this EXPLAIN explains; write it as "
                           "EXPLAIN [ANALYZE] SELECT ...")
    explained = _one_statement(query[position:])
    if explained.type != duckdb.StatementType.SELECT:
        raise _refused(f"EXPLAIN explains a {explained.type.name}")
    return " ".join(words) + "\n" + explained.query.strip()


def checked_statement(query: str) -> str:
    """The statement to run for ``query``; raise ``SqlError`` unless it is one read-only statement."""
    statement = _one_statement(query)
    if statement.type == duckdb.StatementType.EXPLAIN:
        return _explain(statement.query)
    if statement.type != duckdb.StatementType.SELECT:
        raise _refused(f"this is a {statement.type.name}")
    return query
