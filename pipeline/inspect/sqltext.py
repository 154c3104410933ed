"""SQL text handling for ``idxlake sql``: a small lexer, friendly refusals and binary-length rewrites.

Nothing here runs SQL, and nothing here is a security boundary: read-only is enforced by
the engines' own settings (:mod:`idxlake.pipeline.inspect.engines`). This pass only turns
the common mistakes into a helpful one-line refusal before an engine is even opened, and
rewrites what the engines cannot parse (``length(image)``, time travel in
:mod:`idxlake.pipeline.inspect.timetravel`). The lexer knows single-quoted strings (``''``
escapes, no backslash escapes, as DataFusion and DuckDB read them), double-quoted and
backtick identifiers, ``--`` comments and nested ``/* */`` comments (both engines nest them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from idxlake.schemas import QueryError

READ_STATEMENTS = frozenset({"SELECT", "WITH", "VALUES", "EXPLAIN", "DESCRIBE", "DESC", "SHOW", "FROM",
                             "TABLE", "SUMMARIZE"})
"""First keywords of the statements ``idxlake sql`` runs (``FROM``/``TABLE``/``SUMMARIZE``: DuckDB)."""

WRITE_KEYWORDS = frozenset({
    "INSERT", "UPDATE", "DELETE", "MERGE", "UPSERT", "COPY", "CREATE", "DROP", "ALTER", "TRUNCATE",
    "ATTACH", "DETACH", "VACUUM", "OPTIMIZE", "GRANT", "REVOKE", "INSTALL", "LOAD", "EXPORT", "IMPORT",
    "PRAGMA", "CHECKPOINT", "PREPARE", "EXECUTE", "DEALLOCATE", "CALL", "SET", "RESET", "USE", "BEGIN",
    "COMMIT", "ROLLBACK",
})
"""Keywords refused anywhere outside strings, comments and quoted identifiers."""

_CLAUSES = frozenset({"FROM", "WHERE", "HAVING", "BY", "ON", "LIMIT", "WINDOW", "QUALIFY", "JOIN", "USING",
                      "VALUES", "WHEN", "THEN", "ELSE"})
_AFTER_SELECT_LIST = frozenset({"FROM", "ORDER", "LIMIT", "UNION", "EXCEPT", "INTERSECT"})

_READ_LIST = ("SELECT", "WITH", "VALUES", "EXPLAIN", "DESCRIBE", "SHOW")

BINARY_LENGTH_FUNCTIONS = frozenset({"LENGTH", "OCTET_LENGTH", "CHAR_LENGTH", "CHARACTER_LENGTH", "BIT_LENGTH",
                                     "STRLEN"})
"""Functions rewritten when applied directly to a binary column (see :func:`rewrite_binary_lengths`)."""

TokenKind = Literal["word", "quoted", "string", "number", "punct"]

_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")
_DOLLAR = re.compile(r"\$(?:[A-Za-z_][A-Za-z0-9_]*)?\$")
_NUMBER = re.compile(r"[0-9]+(\.[0-9]*)?([eE][+-]?[0-9]+)?|\.[0-9]+([eE][+-]?[0-9]+)?")


@dataclass(frozen=True)
class Token:
    """One lexical token.

    Attributes:
        kind: ``word`` (keyword or bare identifier), ``quoted`` (quoted identifier),
            ``string``, ``number`` or ``punct`` (one character, ``;`` included).
        text: The token's text as written.
        start: Offset of the first character in the SQL text.
        end: Offset after the last character.
        depth: Parenthesis depth at the token (a ``(`` has the outer depth).
    """

    kind: TokenKind
    text: str
    start: int
    end: int
    depth: int

    @property
    def upper(self) -> str:
        """The text in upper case (keyword comparisons)."""
        return self.text.upper()


def _skip_quoted(sql: str, i: int, quote: str) -> int:
    """Offset after the quoted run starting at ``sql[i] == quote``; doubled quotes escape."""
    j = i + 1
    while True:
        k = sql.find(quote, j)
        if k < 0:
            return len(sql)
        if k + 1 < len(sql) and sql[k + 1] == quote:
            j = k + 2
            continue
        return k + 1


def _skip_comment(sql: str, i: int) -> int:
    """Offset after the (nested) ``/* ... */`` comment starting at ``i``."""
    level, j, n = 0, i, len(sql)
    while j < n:
        if sql.startswith("/*", j):
            level, j = level + 1, j + 2
        elif sql.startswith("*/", j):
            level, j = level - 1, j + 2
            if level == 0:
                return j
        else:
            j += 1
    return n


def tokenize(sql: str) -> list[Token]:
    """Split SQL text into tokens, dropping whitespace and comments.

    Args:
        sql: SQL text (one or more statements).

    Returns:
        The tokens in order, each with its parenthesis depth.
    """
    tokens: list[Token] = []
    i, depth, n = 0, 0, len(sql)
    while i < n:
        c = sql[i]
        if c.isspace():
            i += 1
        elif sql.startswith("--", i):
            k = sql.find("\n", i)
            i = n if k < 0 else k + 1
        elif sql.startswith("/*", i):
            i = _skip_comment(sql, i)
        elif c == "'":
            j = _skip_quoted(sql, i, "'")
            tokens.append(Token("string", sql[i:j], i, j, depth))
            i = j
        elif c == "$" and (m := _DOLLAR.match(sql, i)):  # DuckDB's $tag$ ... $tag$ strings
            k = sql.find(m.group(), m.end())
            j = n if k < 0 else k + len(m.group())
            tokens.append(Token("string", sql[i:j], i, j, depth))
            i = j
        elif c in "\"`":
            j = _skip_quoted(sql, i, c)
            tokens.append(Token("quoted", sql[i:j], i, j, depth))
            i = j
        elif m := _WORD.match(sql, i):
            tokens.append(Token("word", m.group(), i, m.end(), depth))
            i = m.end()
        elif (m := _NUMBER.match(sql, i)) and m.group():
            tokens.append(Token("number", m.group(), i, m.end(), depth))
            i = m.end()
        else:
            if c == ")":
                depth = max(0, depth - 1)
            tokens.append(Token("punct", c, i, i + 1, depth))
            if c == "(":
                depth += 1
            i += 1
    return tokens


def _statements(tokens: list[Token]) -> list[list[Token]]:
    out: list[list[Token]] = [[]]
    for tok in tokens:
        if tok.kind == "punct" and tok.text == ";":
            out.append([])
        else:
            out[-1].append(tok)
    return [s for s in out if s]


def _statement_keyword(stmt: list[Token]) -> str:
    """The keyword that decides what a statement does (through leading ``(`` and ``EXPLAIN`` options)."""
    i = 0
    while i < len(stmt) and stmt[i].text == "(":
        i += 1
    if i >= len(stmt):
        return ""
    first = stmt[i].upper if stmt[i].kind == "word" else stmt[i].text
    if first != "EXPLAIN":
        return first
    i += 1
    if i < len(stmt) and stmt[i].text == "(":  # EXPLAIN (ANALYZE, FORMAT JSON) ...
        depth = stmt[i].depth
        i += 1
        while i < len(stmt) and not (stmt[i].text == ")" and stmt[i].depth == depth):
            i += 1
        i += 1
    while i < len(stmt) and stmt[i].kind == "word" and stmt[i].upper in ("ANALYZE", "VERBOSE", "FORMAT"):
        i += 2 if stmt[i].upper == "FORMAT" else 1
    inner = _statement_keyword(stmt[i:])
    return first if not inner or inner in READ_STATEMENTS else inner


MAX_SQL_CHARS = 64 << 10
"""Longest SQL text accepted (checked before any parser runs)."""
MAX_OPERATORS = 1000
"""Most operators in one statement: DuckDB's expression depth limit. DataFusion plans a chain ``1+1+...``
in quadratic time and overflows its stack near 10000 terms (SIGSEGV), with no limit of its own."""
_OPERATORS = frozenset("+-*/%|&^<>=!~")


def _from_first_body(stmt: list[Token]) -> bool:
    """A query body starting with FROM below the top: ``(FROM t)``, or ``WITH a AS (...) FROM t``."""
    opened: list[int] = []
    closed_by: dict[int, int] = {}
    for i, t in enumerate(stmt):
        if t.kind == "punct" and t.text == "(":
            opened.append(i)
        elif t.kind == "punct" and t.text == ")" and opened:
            closed_by[i] = opened.pop()
    for i, t in enumerate(stmt[1:], 1):
        if t.kind != "word" or t.upper != "FROM":
            continue
        prev = stmt[i - 1]
        if prev.kind == "punct" and prev.text == "(":
            return True
        start = closed_by.get(i - 1)
        if start and stmt[start - 1].upper in ("AS", "MATERIALIZED"):  # the end of a CTE's definition
            return True
    return False


def check_read_only(sql: str, *, engine: str | None = None) -> str:
    """Refuse anything but one read-only statement, of a bounded size.

    Args:
        sql: The user's SQL text.
        engine: The engine that will run it (``FROM``-first statements are DuckDB's only).

    Returns:
        The statement without trailing semicolons and whitespace.

    Raises:
        QueryError: for an empty text, several statements, or a statement that could modify
            anything (the table, the session, or files).
    """
    if len(sql) > MAX_SQL_CHARS:
        raise QueryError(f"the SQL text is {len(sql)} characters, more than {MAX_SQL_CHARS}; shorten it")
    tokens = tokenize(sql)
    operators = sum((t.kind == "punct" and t.text in _OPERATORS) or t.upper in ("AND", "OR") for t in tokens)
    if operators > MAX_OPERATORS:
        raise QueryError(f"the statement has {operators} operators, more than {MAX_OPERATORS}; "
                         "use IN (...) lists or split the query")
    statements = _statements(tokens)
    if not statements:
        raise QueryError("empty SQL statement; e.g. \"SELECT split, label, count(*) FROM t GROUP BY 1, 2\"")
    if len(statements) > 1:
        raise QueryError(f"{len(statements)} SQL statements given; run one statement at a time")
    stmt = statements[0]
    kind = _statement_keyword(stmt)
    writes = sorted({t.upper for t in stmt if t.kind == "word" and t.upper in WRITE_KEYWORDS})
    if engine == "datafusion" and (kind in ("FROM", "TABLE", "SUMMARIZE") or _from_first_body(stmt)):
        first = kind if kind in ("TABLE", "SUMMARIZE") else "FROM"
        raise QueryError(f"{first}-first statements are DuckDB syntax (DataFusion reads `FROM t` as a select of "
                         "no columns); write SELECT ... FROM, or use --engine duckdb")
    if kind in READ_STATEMENTS and not writes:
        return sql[:stmt[-1].end].strip()
    if kind not in READ_STATEMENTS and kind not in WRITE_KEYWORDS and not writes:
        raise QueryError(f"{stmt[0].text!r} does not start a read-only statement; "
                         f"expected one of {', '.join(_READ_LIST)}")
    what = writes[0] if kind in READ_STATEMENTS else kind
    raise QueryError(
        f"{what} statements are refused: the table is read-only through `idxlake sql` (only "
        f"{', '.join(_READ_LIST)} run). Change data with `idxlake ingest`; compact files with "
        "`idxlake optimize`; remove old files with `idxlake vacuum`"
        + (f" (quote {what.lower()!r} if it is a column name or alias)" if kind in READ_STATEMENTS else ""))


def rewrite_binary_lengths(sql: str, binary_columns: set[str], *, engine: Literal["datafusion", "duckdb"]) -> str:
    """Make ``length(col)``-style calls on binary columns return the byte count.

    DataFusion's ``length``/``octet_length``/``bit_length`` accept only strings (and
    ``length`` of a cast fails on non-UTF-8 bytes); DuckDB has ``octet_length`` for blobs but
    no ``length``. Calls whose single argument is a binary column (optionally qualified)
    are rewritten to an expression each engine supports: DataFusion ``(byte_length(col))``
    (a UDF registered by :mod:`idxlake.pipeline.inspect.engines`), DuckDB ``octet_length(col)``
    (``bit_length`` multiplies by 8). A call that is a whole SELECT-list item without an
    alias gets its own text as alias, so the result column is named as written.

    Args:
        sql: A statement that passed :func:`check_read_only`.
        binary_columns: Lower-cased names of the table's binary columns.
        engine: The engine the statement is for.

    Returns:
        The rewritten statement (unchanged when nothing matches).
    """
    tokens = tokenize(sql)
    edits: list[tuple[int, int, str]] = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if not (tok.kind == "word" and tok.upper in BINARY_LENGTH_FUNCTIONS and i + 1 < len(tokens)
                and tokens[i + 1].text == "("):
            i += 1
            continue
        j = i + 2
        arg: list[Token] = []
        while j < len(tokens) and (tokens[j].kind in ("word", "quoted") or tokens[j].text == "."):
            arg.append(tokens[j])
            j += 1
        if not arg or j >= len(tokens) or tokens[j].text != ")" or arg[-1].kind == "punct":
            i += 1
            continue
        column = arg[-1].text.strip('"`').lower() if arg[-1].kind == "quoted" else arg[-1].text.lower()
        if column not in binary_columns:
            i += 1
            continue
        expr = sql[arg[0].start:arg[-1].end]
        bits = tok.upper == "BIT_LENGTH"
        if engine == "datafusion":
            new = f"(byte_length({expr}){' * 8' if bits else ''})"
        else:
            new = f"(octet_length({expr}){' * 8' if bits else ''})"
        if _bare_select_item(tokens, i, j):  # keep the column name the user wrote
            new += ' AS "' + sql[tok.start:tokens[j].end].replace('"', '""') + '"'
        edits.append((tok.start, tokens[j].end, new))
        i = j + 1
    for start, end, new in reversed(edits):
        sql = sql[:start] + new + sql[end:]
    return sql


def _bare_select_item(tokens: list[Token], i: int, j: int) -> bool:
    """True when ``tokens[i..j]`` (one call) is a whole SELECT-list item without an alias."""
    prev = tokens[i - 1] if i else None
    nxt = tokens[j + 1] if j + 1 < len(tokens) else None
    if prev is None or not (prev.text == "," or prev.upper in ("SELECT", "DISTINCT", "ALL")):
        return False
    if nxt is not None and not (nxt.text in (",", ")") or nxt.upper in _AFTER_SELECT_LIST):
        return False
    depth = tokens[i].depth
    for t in reversed(tokens[:i]):
        if t.depth < depth:
            return False
        if t.depth == depth and t.kind == "word" and t.upper == "SELECT":
            return True
        if t.depth == depth and t.kind == "word" and t.upper in _CLAUSES:
            return False
    return False
