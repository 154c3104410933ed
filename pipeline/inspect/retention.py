"""How long a table keeps the files its versions removed: ``delta.deletedFileRetentionDuration``.

Delta writes the property as a Spark interval, ``interval <n> <unit>`` (``interval 30 days``,
``interval 1 week``); vacuum must never delete a file younger than it unless the user asks.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from idxlake.schemas import MaintenanceError

RETENTION_KEY = "delta.deletedFileRetentionDuration"
DEFAULT_RETENTION_HOURS = 168
"""Delta's default retention for vacuum (7 days), when the table does not set :data:`RETENTION_KEY`."""

UNIT_HOURS: dict[str, float] = {
    "nanosecond": 1 / 3.6e12, "microsecond": 1 / 3.6e9, "millisecond": 1 / 3.6e6, "second": 1 / 3600,
    "minute": 1 / 60, "hour": 1.0, "day": 24.0, "week": 168.0,
}
"""Hours per interval unit (singular; a plural ``s`` is accepted)."""
_TERM = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-z]+)", re.IGNORECASE)


def retention_hours(configuration: Mapping[str, str | None], *, where: str) -> float:
    """The table's retention in hours (:data:`DEFAULT_RETENTION_HOURS` when it sets none).

    Reads what delta-rs reads: ``interval 30 days``, ``30 days``, ``interval 1 day 12 hours``, ``0.5 days``.

    Args:
        configuration: The table's properties (``DeltaTable.metadata().configuration``).
        where: The table, for the error message.

    Raises:
        MaintenanceError: the property is set but is no interval this parser knows.
    """
    value = configuration.get(RETENTION_KEY)
    if value is None:
        return float(DEFAULT_RETENTION_HOURS)
    text = re.sub(r"^\s*interval\s+", "", value, flags=re.IGNORECASE)
    hours, end = 0.0, 0
    for m in _TERM.finditer(text):
        unit = m[2].lower().removesuffix("s") if m[2].lower() not in UNIT_HOURS else m[2].lower()
        if m.start() != end or unit not in UNIT_HOURS:
            break
        hours, end = hours + float(m[1]) * UNIT_HOURS[unit], m.end()
    if end == 0 or text[end:].strip():
        raise MaintenanceError(
            f"{where}: table property {RETENTION_KEY} = {value!r} is not an interval such as 'interval 30 days' "
            f"(units: {', '.join(UNIT_HOURS)}); pass --retain-hours with --full, or fix the property")
    return hours
