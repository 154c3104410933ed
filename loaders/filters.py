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

Filter strings are limited before pyarrow sees anything (a deep expression tree crashes it):
at most :data:`MAX_FILTER_CHARS` characters, :data:`MAX_FILTER_DEPTH` levels of parentheses
and ``NOT``, :data:`MAX_FILTER_TERMS` comparisons, :data:`MAX_IN_VALUES` values per ``IN``;
integers within int64, decimals finite, strings up to :data:`MAX_STRING_CHARS`. A
``pyarrow.dataset.Expression`` is the caller's own code and is passed through as is.
:func:`check_int` applies the same idea to the loader's integer arguments.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable

import pyarrow as pa
import pyarrow.dataset as pads

from idxlake.schemas import ID, LABEL, SPLIT, LoaderConfigError

FILTER_COLUMNS: tuple[str, ...] = (ID, LABEL, SPLIT)
"""Columns a filter may use (``image`` is never read to plan)."""
MAX_FILTER_CHARS = 4096
"""Longest filter string accepted."""
MAX_FILTER_DEPTH = 32
"""Deepest nesting of parentheses and ``NOT`` accepted."""
MAX_FILTER_TERMS = 128
"""Most comparisons (``=``, ``IN``, ``BETWEEN``...) in one filter."""
MAX_IN_VALUES = 1024
"""Most values in one ``IN (...)`` list."""
MAX_STRING_CHARS = 256
"""Longest quoted string literal."""
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
"""Integer literals must fit the int64 ``id`` column."""
MAX_BATCH_SIZE = 1 << 24
"""Largest loader ``batch_size`` (16,777,216 rows)."""
MAX_WORLD_SIZE = 1 << 16
"""Largest loader ``world_size``."""

_TOKEN = re.compile(r"""\s*(?:(?P<num>-?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)|(?P<str>'(?:[^']|'')*'|"[^"]*")"""
                    r"""|(?P<op><=|>=|==|!=|<>|[=<>(),])|(?P<word>[A-Za-z_][A-Za-z_0-9]*))""")
_OPS: dict[str, Callable] = {"=": operator.eq, "==": operator.eq, "!=": operator.ne, "<>": operator.ne,
                             "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
_KEYWORDS = {"and", "or", "not", "in", "between"}


def _limit(text: str, what: str) -> LoaderConfigError:
    shown = text if len(text) <= 80 else f"{text[:60]}... ({len(text)} characters)"
    return LoaderConfigError(f"filter {shown!r}: {what}")


def check_int(name: str, value: object, *, low: int, high: int, limit: str = "") -> int:
    """Check an integer loader argument against its limits (before numpy or delta-rs sees it).

    Args:
        name: Argument name, for the message.
        value: The value given.
        low: Smallest accepted value.
        high: Largest accepted value.
        limit: Name of the constant behind ``high``, for the message.

    Raises:
        LoaderConfigError: not an integer (bools are refused; numpy integers are fine), or out of
            ``[low, high]``.
    """
    try:
        number = None if isinstance(value, bool) else operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        number = None
    if number is None or not low <= number <= high:
        bound = f"{high}{f' ({limit})' if limit else ''}"
        raise LoaderConfigError(f"{name} must be an integer >= {low} and <= {bound}, got {value!r}")
    return number


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
        self.depth = 0
        self.terms = 0

    def nest(self) -> None:
        self.depth += 1
        if self.depth > MAX_FILTER_DEPTH:
            raise _limit(self.text, f"nested deeper than {MAX_FILTER_DEPTH} levels of parentheses/NOT "
                                    "(MAX_FILTER_DEPTH)")

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
            self.nest()
            out = ~self.neg()
            self.depth -= 1
            return out
        if self.i < len(self.toks) and self.toks[self.i] == ("op", "("):
            self.i += 1
            self.nest()
            out = self.expr()
            self.take("op", ")")
            self.depth -= 1
            return out
        return self.compare()

    def literal(self) -> object:
        if self.i >= len(self.toks):
            raise self.error("a literal")
        kind, value = self.toks[self.i]
        self.i += 1
        if kind == "num":
            if len(value) > 40:
                raise _limit(self.text, f"number {value[:20]}... has {len(value)} characters; literals must fit "
                                        "int64 or be finite decimals")
            number = float(value) if any(c in value for c in ".eE") else int(value)
            if not math.isfinite(number) or not INT64_MIN <= number <= INT64_MAX:
                raise _limit(self.text, f"literal {value} is not a finite number within the int64 range "
                                        f"[{INT64_MIN}, {INT64_MAX}] (INT64_MIN/INT64_MAX)")
            return number
        if kind == "str":
            if len(value) - 2 > MAX_STRING_CHARS:
                raise _limit(self.text, f"string literal of {len(value) - 2} characters; at most "
                                        f"{MAX_STRING_CHARS} (MAX_STRING_CHARS)")
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
        self.terms += 1
        if self.terms > MAX_FILTER_TERMS:
            raise _limit(self.text, f"more than {MAX_FILTER_TERMS} comparisons (MAX_FILTER_TERMS)")
        field = pads.field(column)
        negate = self.accept_word("not")
        if self.accept_word("in"):
            self.take("op", "(")
            values = [self.literal()]
            while self.i < len(self.toks) and self.toks[self.i] == ("op", ","):
                self.i += 1
                values.append(self.literal())
                if len(values) > MAX_IN_VALUES:
                    raise _limit(self.text, f"more than {MAX_IN_VALUES} values in IN (...) (MAX_IN_VALUES)")
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
    if len(text) > MAX_FILTER_CHARS:
        raise _limit(text, f"longer than {MAX_FILTER_CHARS} characters (MAX_FILTER_CHARS)")
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
    except (pa.ArrowException, TypeError, ValueError, OverflowError) as exc:
        raise LoaderConfigError(f"filter {value!s}: {exc}; filters may use {list(FILTER_COLUMNS)}") from exc
    return expr
