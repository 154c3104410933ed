"""Which versions a table has, and what ``version=N`` / ``as_of=TIMESTAMP`` mean on it.

Delta time travel by timestamp picks the latest version committed at or before the
timestamp. Commit times are the ``timestamp`` of each commit's ``commitInfo`` (what
``idxlake history`` prints), so a timestamp copied from the history selects that version.
A request outside the table's range gets one line that names the range, e.g.
``table has versions 0-3 (2026-11-24T02:40:57Z .. 2026-11-24T02:41:05Z); version 5 does not exist``.
"""

from __future__ import annotations

import operator
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, SupportsIndex

from idxlake.schemas.errors import TableNotFoundError, TimeTravelError

if TYPE_CHECKING:
    from deltalake import DeltaTable

Timestamp = datetime | str
"""An ``as_of`` value: an aware or naive (= UTC) datetime, or ISO 8601 / ``YYYY-MM-DD[ HH:MM[:SS[.fff]]]`` text."""

_COMPACT = re.compile(r"\d{14}(\d{3})?")  # Databricks' t@yyyyMMddHHmmssSSS form


def parse_timestamp(value: Timestamp) -> datetime:
    """An aware UTC datetime from ``value`` (naive values and text without a zone are UTC).

    Accepts ISO 8601 (``2026-11-24T02:41:00Z``, ``2026-11-24 02:41:00+01:00``), a date
    (``2026-11-24`` = midnight UTC) and Databricks' compact ``yyyyMMddHHmmss[SSS]``.

    Raises:
        TimeTravelError: for text that is not a timestamp (a bad time-travel request).
    """
    if isinstance(value, datetime):
        stamp = value
    else:
        text = str(value).strip()
        try:
            if _COMPACT.fullmatch(text):
                stamp = datetime.strptime(text[:14], "%Y%m%d%H%M%S").replace(microsecond=int(text[14:] or 0) * 1000)
            else:
                stamp = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
        except ValueError:
            raise TimeTravelError(
                f"{value!r} is not a timestamp; write e.g. '2026-11-24 02:41:00' (UTC), "
                "'2026-11-24T02:41:00Z' or '2026-11-24'") from None
    return stamp.replace(tzinfo=timezone.utc) if stamp.tzinfo is None else stamp.astimezone(timezone.utc)


def iso_millis(millis: int) -> str:
    """A commit time (ms since the epoch) as ``2026-11-24T02:40:57.461Z``: to the millisecond the commits are
    compared at, so a time copied from a message selects the version it names."""
    stamp = datetime.fromtimestamp(millis // 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{millis % 1000:03d}Z"


def _iso(stamp: datetime) -> str:
    text = stamp.strftime("%Y-%m-%dT%H:%M:%S")
    return text + (f".{stamp.microsecond // 1000:03d}" if stamp.microsecond else "") + "Z"


@dataclass(frozen=True)
class VersionRange:
    """The commits of a table that can be time-travelled to.

    Attributes:
        uri: Table URI.
        commits: ``(version, commit time in ms, operation)`` per commit, oldest first.
    """

    uri: str
    commits: tuple[tuple[int, int, str], ...]

    @property
    def first(self) -> int:
        """Oldest version whose commit is still in the log."""
        return self.commits[0][0]

    @property
    def latest(self) -> int:
        """Newest version."""
        return self.commits[-1][0]

    def describe(self) -> str:
        """``table has versions 0-3 (2026-11-24T02:40:57Z .. 2026-11-24T02:41:05Z)``."""
        if self.first == self.latest:
            return f"table has version {self.first} only ({iso_millis(self.commits[0][1])})"
        return (f"table has versions {self.first}-{self.latest} ({iso_millis(self.commits[0][1])} .. "
                f"{iso_millis(self.commits[-1][1])})")

    def timestamp_of(self, version: int) -> int | None:
        """Commit time (ms) of ``version``, if in the log."""
        return next((ms for v, ms, _ in self.commits if v == version), None)

    def check_version(self, version: int) -> int:
        """``version`` (any integer, numpy's too) if it exists, else :class:`TableNotFoundError` naming the range."""
        number = as_version(version)
        if number is None or not self.first <= number <= self.latest:
            raise TableNotFoundError(f"{self.uri}: {self.describe()}; version {version!r} does not exist"
                                     if number is None else f"{self.uri}: {self.describe()}; version {version} "
                                     "does not exist")
        return number

    def at(self, as_of: Timestamp, *, now: float | None = None) -> int:
        """The latest version committed at or before ``as_of``.

        Raises:
            TableNotFoundError: ``as_of`` is before the first commit or in the future.
        """
        stamp = parse_timestamp(as_of)
        millis = stamp.timestamp() * 1000
        if millis > (time.time() if now is None else now) * 1000:
            raise TableNotFoundError(f"{self.uri}: {self.describe()}; {_iso(stamp)} is in the future")
        candidates = [v for v, ms, _ in self.commits if ms <= millis]
        if not candidates:
            raise TableNotFoundError(f"{self.uri}: {self.describe()}; no version existed at {_iso(stamp)}")
        return max(candidates)

    def resolve(self, *, version: int | None = None, as_of: Timestamp | None = None) -> int:
        """``version`` (checked), the version at ``as_of``, or the latest."""
        if version is not None and as_of is not None:
            raise TimeTravelError(f"{self.uri}: give a version or a timestamp (as_of), not both")
        if as_of is not None:
            return self.at(as_of)
        return self.latest if version is None else self.check_version(version)

    def vacuum_note(self, version: int) -> str | None:
        """``"vacuumed at ... (version 4)"`` when a VACUUM commit after ``version`` exists."""
        for v, ms, operation in self.commits:
            if v > version and operation.upper().startswith("VACUUM"):
                return f"vacuumed at {iso_millis(ms)} (VACUUM, version {v})"
        return None


def as_version(value: object) -> int | None:
    """``value`` as a Python int if it is an integer (not a bool), else ``None``."""
    if isinstance(value, bool) or not isinstance(value, SupportsIndex):
        return None
    return operator.index(value)


def version_range(uri: str, *, table: DeltaTable | None = None,
                  storage_options: Mapping[str, str] | None = None) -> VersionRange:
    """The versions of a table, from its log (``DeltaTable.history()``).

    Args:
        uri: Table path or URI.
        table: An already opened latest ``DeltaTable`` (saves a log read).
        storage_options: delta-rs storage options.

    Raises:
        TableNotFoundError: no table at ``uri``.
    """
    if table is None:
        from deltalake import DeltaTable
        from deltalake.exceptions import DeltaError

        from idxlake.schemas.storage import delta_options, normalize

        try:
            table = DeltaTable(normalize(uri), storage_options=delta_options(uri, storage_options))
        except DeltaError as exc:
            raise TableNotFoundError(f"{uri}: no Delta table here ({exc})") from exc
    return range_of(uri, table.history())


def range_of(uri: str, history: Sequence[Mapping[str, Any]]) -> VersionRange:
    """A :class:`VersionRange` from ``DeltaTable.history()`` entries."""
    commits = sorted((int(c["version"]), int(c.get("timestamp") or 0), str(c.get("operation") or ""))
                     for c in history if c.get("version") is not None)
    if not commits:
        raise TableNotFoundError(f"{uri}: the Delta log lists no commits")
    return VersionRange(uri, tuple(commits))
