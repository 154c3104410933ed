"""SQL identifiers for a table: the name a table is registered under in ``idxlake sql`` and ``show``."""

from __future__ import annotations

import re

from idxlake.schemas import QueryError

_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]*")
_RESERVED = frozenset({"select", "from", "where", "table", "order", "group", "by", "limit", "join", "on",
                       "and", "or", "not", "as", "with", "values", "union", "all", "case", "when", "then",
                       "else", "end", "null", "true", "false", "in", "is", "having", "distinct", "default"})


def table_identifier(uri: str) -> str:
    """A valid, lower-case SQL identifier from the last path component of a table URI.

    ``/data/My-Table`` -> ``my_table``; ``s3://b/2024/`` -> ``t_2024``; reserved words get ``t_``.
    """
    last = uri.rstrip("/").replace("\\", "/").rsplit("/", 1)[-1]
    name = re.sub(r"[^a-z0-9_]+", "_", last.lower()).strip("_") or "t"
    if name[0].isdigit() or name in _RESERVED:
        name = f"t_{name}"
    return name


def check_identifier(name: str) -> str:
    """Validate a user-given table name for SQL (returned lower-cased).

    Raises:
        QueryError: if ``name`` is not a plain identifier.
    """
    lowered = name.lower()
    if not _IDENTIFIER.fullmatch(lowered) or lowered in _RESERVED:
        raise QueryError(f"--name {name!r} is not a plain SQL identifier (letters, digits, _; not a keyword); "
                         f"try {table_identifier(name)!r}")
    return lowered
