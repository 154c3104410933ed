"""What the CLI prints about errors: one readable line, no terminal escape sequences.

delta-rs and object-store clients put ANSI colour codes and multi-line context (backtraces,
"Caused by:" chains) into their messages. The CLI shows one clean line; ``--debug`` shows all.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import TextIO

from idxlake.schemas.storage import ANSI_ESCAPE, redact

MAX_LINE = 600
"""Longest one-line message; longer ones end with an ellipsis (``--debug`` shows the whole text)."""


def strip_ansi(text: str) -> str:
    """``text`` without ANSI escape sequences (and without other C0 control characters but tab/newline)."""
    text = ANSI_ESCAPE.sub("", text)
    return "".join(ch for ch in text if ch >= " " or ch in "\t\n")


def one_line(text: str, *, limit: int = MAX_LINE) -> str:
    """A message as one readable line: escapes removed, blank and backtrace lines dropped, lines joined,
    secrets in URLs redacted (an Azure SAS signature in a pyarrow error)."""
    lines = [ln.strip() for ln in redact(strip_ansi(text)).splitlines()]
    kept = [ln for ln in lines if ln and not ln.startswith(("at ", "stack backtrace", "note: run with"))
            and not re.match(r"^\d+: ", ln)]
    line = "; ".join(dict.fromkeys(kept)) or "(no message)"
    return line if len(line) <= limit else line[:limit - 1] + "…"


class StderrHandler(logging.StreamHandler):
    """A handler writing to whatever ``sys.stderr`` is at emit time (not the stream seen at set-up)."""

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass


class CleanFormatter(logging.Formatter):
    """Log formatter that strips ANSI escapes from every record (the CLI's log handler uses it)."""

    def format(self, record: logging.LogRecord) -> str:
        return strip_ansi(super().format(record))
