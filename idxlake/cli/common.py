"""Shared CLI plumbing: table options, output helpers. Light imports only."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable


def parse_storage_options(pairs: list[str] | None) -> dict[str, str] | None:
    """Turn ``["K=V", ...]`` into a dict (``None`` when empty).

    Raises:
        argparse.ArgumentTypeError: for an item without ``=``.
    """
    if not pairs:
        return None
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"--storage-option expects KEY=VALUE, got {pair!r}")
        out[key] = value
    return out


def key_value(text: str) -> str:
    """argparse ``type`` for ``K=V`` (a bad value is a usage error: exit 2)."""
    if "=" not in text or not text.partition("=")[0]:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return text


def positive_int(text: str) -> int:
    """argparse ``type`` for an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def non_empty(text: str) -> str:
    """argparse ``type`` for a path that must not be empty (e.g. an unset ``$SRC``)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("empty path")
    return text


def add_table_options(parser: argparse.ArgumentParser, *, version: bool = True, as_of: bool = False) -> None:
    """Add ``--storage-option K=V`` (repeatable), optionally ``--version N`` and ``--as-of TIMESTAMP``."""
    parser.add_argument("--storage-option", action="append", metavar="K=V", default=None, type=key_value,
                        help="object-store option passed to delta-rs/pyarrow (repeatable), "
                             "e.g. AWS_ENDPOINT_URL=http://127.0.0.1:9000")
    if version:
        parser.add_argument("--version", type=VERSION_NUMBER, default=None, metavar="N",
                            help="read this table version (time travel); default: latest")
    if as_of:
        parser.add_argument("--as-of", default=None, metavar="TIMESTAMP",
                            help="read the version that was latest at TIMESTAMP (UTC unless it says otherwise), "
                                 "e.g. '2026-11-24 02:41:00' or 2026-11-24T02:41:00Z; not with --version")


def time_travel(args: argparse.Namespace) -> tuple[int | None, str | None]:
    """``(version, as_of)`` from ``--version`` / ``--as-of`` (refusing both at once)."""
    version, as_of = getattr(args, "version", None), getattr(args, "as_of", None)
    if version is not None and as_of is not None:
        from idxlake.schemas import QueryError

        raise QueryError(f"give --version or --as-of, not both (got --version {version} --as-of {as_of!r})")
    return version, as_of


def add_json_option(parser: argparse.ArgumentParser, what: str) -> None:
    """Add ``--json``: print one JSON document with stable keys (documented in the README) instead of text."""
    parser.add_argument("--json", action="store_true",
                        help=f"print {what} as one JSON document with stable keys (see README)")


def storage_options(args: argparse.Namespace) -> dict[str, str] | None:
    """The parsed ``--storage-option`` values of ``args``."""
    return parse_storage_options(getattr(args, "storage_option", None))


def is_tty() -> bool:
    """True when stderr is a terminal (progress bars go there)."""
    return sys.stderr.isatty()


def output_dir(text: str) -> str:
    """argparse ``type`` for a local output directory: created if missing, so never an existing plain file."""
    import os

    if not text.strip():
        raise argparse.ArgumentTypeError("empty path")
    if "://" not in text and os.path.exists(text) and not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text} is a file; give a directory (it is created if missing)")
    return text


def bounded_int(low: int, high: int) -> Callable[[str], int]:
    """argparse ``type`` for an integer in ``[low, high]`` (a huge value is a usage error, not an overflow)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        if value > high:
            raise argparse.ArgumentTypeError(f"must be <= {high}, got {text}")
        return value

    parse.__name__ = "integer"  # argparse's "invalid integer value" wording
    return parse


VERSION_NUMBER = bounded_int(0, 2**63 - 1)
"""A Delta version (a signed 64-bit integer in the log)."""
