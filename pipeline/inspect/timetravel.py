"""Time travel the way Delta users write it, rewritten for the embedded engines.

Spark and Databricks read an older version with ``FROM t VERSION AS OF 3``,
``FROM t TIMESTAMP AS OF '2026-11-24 02:41:00'`` or the shorthand ``t@v3`` /
``t@20261124024100000``. Neither DataFusion nor DuckDB parses these, so this friendly text
pass replaces each clause by the name of a table registered for that version
(``t__v3``, see :func:`version_name`) and the caller registers every distinct version as its
own read-only table. A clause without an alias keeps the table's name as its alias, so
``t.label`` still resolves. This is not a security boundary: whatever text comes out is
planned under the engines' read-only settings like any other statement.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from idxlake.pipeline.inspect.sqltext import Token, tokenize
from idxlake.schemas import QueryError

Kind = Literal["version", "timestamp"]

_SHORT_VERSION = re.compile(r"[vV](\d+)")
_SHORT_TIMESTAMP = re.compile(r"\d{14}(\d{3})?")
_NOT_ALIAS = frozenset({
    "WHERE", "GROUP", "ORDER", "LIMIT", "OFFSET", "FETCH", "JOIN", "INNER", "LEFT", "RIGHT", "FULL", "OUTER",
    "CROSS", "NATURAL", "ON", "USING", "UNION", "EXCEPT", "INTERSECT", "MINUS", "HAVING", "WINDOW", "QUALIFY",
    "LATERAL", "ANTI", "SEMI", "POSITIONAL", "ASOF", "PIVOT", "UNPIVOT", "TABLESAMPLE", "SAMPLE",
    "VERSION", "TIMESTAMP", "FOR",
})


@dataclass(frozen=True)
class TravelClause:
    """One time-travel reference in a statement.

    Attributes:
        start: Offset of the table name in the SQL text.
        end: Offset after the clause.
        kind: ``version`` or ``timestamp``.
        value: The version number, or the timestamp text.
        text: The clause as written (for messages).
        aliased: True when the user gave the reference an alias.
    """

    start: int
    end: int
    kind: Kind
    value: int | str
    text: str
    aliased: bool


def version_name(name: str, version: int) -> str:
    """The name version ``version`` of table ``name`` is registered under: ``name__v3``."""
    return f"{name}__v{version}"


def _unquote(token: Token) -> str:
    return token.text[1:-1].replace("''", "'")


def _is_word(tokens: list[Token], i: int, *words: str) -> bool:
    return all(i + k < len(tokens) and tokens[i + k].kind == "word" and tokens[i + k].upper == w
               for k, w in enumerate(words))


def _has_alias(tokens: list[Token], j: int) -> bool:
    if j >= len(tokens):
        return False
    tok = tokens[j]
    return tok.kind == "quoted" or (tok.kind == "word" and tok.upper not in _NOT_ALIAS)


def find_clauses(sql: str, name: str) -> list[TravelClause]:
    """Every time-travel clause in ``sql``.

    Args:
        sql: One statement.
        name: The (lower-case) name the table is registered under.

    Raises:
        QueryError: a clause on another table, or a clause without a literal version or timestamp.
    """
    tokens = tokenize(sql)
    out: list[TravelClause] = []
    for i, tok in enumerate(tokens):
        kind: Kind | None = None
        if _is_word(tokens, i, "VERSION", "AS", "OF") or _is_word(tokens, i, "TIMESTAMP", "AS", "OF"):
            kind = "version" if tok.upper == "VERSION" else "timestamp"
            head = i - 1 - (i >= 2 and _is_word(tokens, i - 1, "FOR"))
            value_at, end_at = i + 3, i + 4
        elif tok.text == "@" and 0 < i < len(tokens) - 1 and tokens[i - 1].end == tok.start \
                and tokens[i + 1].start == tok.end:
            nxt = tokens[i + 1]
            if nxt.kind == "word" and _SHORT_VERSION.fullmatch(nxt.text):
                kind = "version"
            elif nxt.kind == "number" and _SHORT_TIMESTAMP.fullmatch(nxt.text):
                kind = "timestamp"
            else:
                continue
            head, value_at, end_at = i - 1, i + 1, i + 2
        else:
            continue
        clause = sql[tokens[max(head, 0)].start:tokens[min(value_at, len(tokens) - 1)].end]
        if head < 0 or tokens[head].kind not in ("word", "quoted") or tokens[head].text.strip('"`').lower() != name:
            target = tokens[head].text if head >= 0 else "nothing"
            raise QueryError(f"time travel ({clause!r}) applies to the table registered as {name!r}, not to "
                             f"{target!r}; write FROM {name} VERSION AS OF N (or --name to rename it)")
        value = tokens[value_at] if value_at < len(tokens) else None
        parsed: int | str
        if tok.text == "@":
            assert value is not None
            parsed = int(value.text[1:]) if kind == "version" else value.text
        elif kind == "version":
            if value is None or value.kind != "number" or not value.text.isdigit():
                raise QueryError(f"{clause!r}: VERSION AS OF needs a version number, e.g. {name} VERSION AS OF 3")
            parsed = int(value.text)
        else:
            if value is None or value.kind != "string":
                raise QueryError(f"{clause!r}: TIMESTAMP AS OF needs a quoted timestamp, "
                                 f"e.g. {name} TIMESTAMP AS OF '2026-11-24 02:41:00' (UTC)")
            parsed = _unquote(value)
        out.append(TravelClause(tokens[head].start, tokens[value_at].end, kind, parsed, clause,
                                _has_alias(tokens, end_at)))
    return out


def rewrite_time_travel(sql: str, name: str, resolve: Callable[[TravelClause], int]) -> tuple[str, dict[str, int]]:
    """Replace time-travel clauses by registered version names.

    Args:
        sql: One statement (after :func:`idxlake.pipeline.inspect.sqltext.check_read_only`).
        name: The name the table is registered under.
        resolve: Maps a clause to a version (raises for one out of range).

    Returns:
        ``(sql, tables)``: the rewritten statement and ``{registered name: version}`` of every
        distinct version it reads.
    """
    tables: dict[str, int] = {}
    edits: list[tuple[int, int, str]] = []
    for clause in find_clauses(sql, name):
        version = resolve(clause)
        registered = version_name(name, version)
        tables[registered] = version
        edits.append((clause.start, clause.end, registered if clause.aliased else f"{registered} AS {name}"))
    for start, end, new in reversed(edits):
        sql = sql[:start] + new + sql[end:]
    return sql, tables
