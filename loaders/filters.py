"""Row filters: a ``pyarrow.dataset.Expression`` or a small SQL-ish string parsed into one.

Grammar (keywords case-insensitive; no Python is ever evaluated)::

    expr    := and ("OR" and)*
    and     := not ("AND" not)*
    not     := "NOT" not | "(" expr ")" | compare
    compare := column op literal | column ["NOT"] "IN" "(" literal ("," literal)* ")"
             | column ["NOT"] "BETWEEN" literal "AND" literal
    op      := "=" | "==" | "!=" | "<>" | "<" | "<=" | ">" | ">="
    literal := integer | decimal | 'quoted string' | "quoted string"

Columns are ``id``, ``label`` and ``split``; e.g. ``"label < 5"``,
``"id >= 100 AND label IN (1, 2)"``, ``"split = 'train' AND NOT label = 3"``.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable

import pyarrow as pa
import pyarrow.dataset as pads

from idxlake.schemas import ID, LABEL, SPLIT, LoaderConfigError

FILTER_COLUMNS: tuple[str, ...] = (ID, LABEL, SPLIT)
"""Columns a filter may use (``image`` is never read to plan)."""

_TOKEN = re.compile(r"""\s*(?:(?P<num>-?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)|(?P<str>'(?:[^']|'')*'|"[^"]*")"""
                    r"""|(?P<op><=|>=|==|!=|<>|[=<>(),])|(?P<word>[A-Za-z_][A-Za-z_0-9]*))""")
_OPS: dict[str, Callable] = {"=": operator.eq, "==": operator.eq, "!=": operator.ne, "<>": operator.ne,
                             "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
_KEYWORDS = {"and", "or", "not", "in", "between"}


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise LoaderConfigError(f"filter {text!r}: cannot parse at {text[pos:]!r}")
        kind = m.lastgroup or ""
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.toks = _tokens(text)
        self.i = 0

    def error(self, what: str) -> LoaderConfigError:
        rest = " ".join(v for _, v in self.toks[self.i:]) or "end of filter"
        return LoaderConfigError(f"filter {self.text!r}: expected {what} at {rest!r}")

    def peek_word(self) -> str | None:
        if self.i < len(self.toks) and self.toks[self.i][0] == "word":
            return self.toks[self.i][1].lower()
        return None

    def take(self, kind: str, value: str | None = None) -> str:
        if self.i >= len(self.toks):
            raise self.error(value or kind)
        k, v = self.toks[self.i]
        if k != kind or (value is not None and v.lower() != value):
            raise self.error(value or kind)
        self.i += 1
        return v

    def accept_word(self, word: str) -> bool:
        if self.peek_word() == word:
            self.i += 1
            return True
        return False

    def parse(self) -> pads.Expression:
        expr = self.expr()
        if self.i != len(self.toks):
            raise self.error("AND, OR or the end")
        return expr

    def expr(self) -> pads.Expression:
        out = self.conj()
        while self.accept_word("or"):
            out = out | self.conj()
        return out

    def conj(self) -> pads.Expression:
        out = self.neg()
        while self.accept_word("and"):
            out = out & self.neg()
        return out

    def neg(self) -> pads.Expression:
        if self.accept_word("not"):
            return ~self.neg()
        if self.i < len(self.toks) and self.toks[self.i] == ("op", "("):
            self.i += 1
            out = self.expr()
            self.take("op", ")")
            return out
        return self.compare()

    def literal(self) -> object:
        if self.i >= len(self.toks):
            raise self.error("a literal")
        kind, value = self.toks[self.i]
        self.i += 1
        if kind == "num":
            return float(value) if any(c in value for c in ".eE") else int(value)
        if kind == "str":
            return value[1:-1].replace("''", "'") if value[0] == "'" else value[1:-1]
        self.i -= 1
        raise self.error("a number or a quoted string")

    def compare(self) -> pads.Expression:
        column = self.peek_word()
        if column is None or column in _KEYWORDS:
            raise self.error("a column name")
        if column not in FILTER_COLUMNS:
            raise LoaderConfigError(f"filter {self.text!r}: unknown column {column!r}; "
                                    f"filters may use {list(FILTER_COLUMNS)}")
        self.i += 1
        field = pads.field(column)
        negate = self.accept_word("not")
        if self.accept_word("in"):
            self.take("op", "(")
            values = [self.literal()]
            while self.i < len(self.toks) and self.toks[self.i] == ("op", ","):
                self.i += 1
                values.append(self.literal())
            self.take("op", ")")
            out = field.isin(values)
        elif self.accept_word("between"):
            low = self.literal()
            self.take("word", "and")
            out = (field >= low) & (field <= self.literal())
        elif negate:
            raise self.error("IN or BETWEEN after NOT")
        else:
            if self.i >= len(self.toks) or self.toks[self.i][0] != "op" or self.toks[self.i][1] not in _OPS:
                raise self.error("a comparison operator")
            op = _OPS[self.toks[self.i][1]]
            self.i += 1
            out = op(field, self.literal())
        return ~out if negate else out


def parse_filter(text: str) -> pads.Expression:
    """Parse a SQL-ish filter string into a pyarrow expression.

    Raises:
        LoaderConfigError: on a syntax error or a column other than :data:`FILTER_COLUMNS`.
    """
    if not text.strip():
        raise LoaderConfigError("filter is empty")
    return _Parser(text).parse()


def as_expression(value: str | pads.Expression, schema: pa.Schema) -> pads.Expression:
    """Turn a filter argument into an expression valid on ``schema`` (id, label, split).

    Args:
        value: Filter string or expression.
        schema: Arrow schema of the filter columns.

    Raises:
        LoaderConfigError: unparseable, of the wrong type, or using an unknown column.
    """
    if isinstance(value, str):
        expr = parse_filter(value)
    elif isinstance(value, pads.Expression):
        expr = value
    else:
        raise LoaderConfigError(f"filter must be a string or a pyarrow.dataset.Expression, "
                                f"got {type(value).__name__}")
    try:
        schema.empty_table().filter(expr)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, TypeError) as exc:
        raise LoaderConfigError(f"filter {value!s}: {exc}; filters may use {list(FILTER_COLUMNS)}") from exc
    return expr
