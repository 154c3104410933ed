"""Memory of a process from /proc/PID/smaps (Linux): mappings, and the one holding a buffer."""

from __future__ import annotations

import re
from pathlib import Path


def smaps(pid: int) -> list[dict]:
    """The mappings of a process: start, end, path and the kB fields of /proc/PID/smaps."""
    out: list[dict] = []
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = re.match(r"^([0-9a-f]+)-([0-9a-f]+) \S+ \S+ \S+ \S+\s*(.*)$", line)
        if head:
            out.append({"start": int(head[1], 16), "end": int(head[2], 16), "path": head[3]})
        elif line.split(":")[0] in ("Rss", "Pss", "Private_Clean", "Private_Dirty", "Shared_Clean", "Shared_Dirty"):
            out[-1][line.split(":")[0]] = int(line.split()[1]) * 1024
    return out


def buffer_mapping(pid: int, address: int | None = None, path: str | None = None) -> dict:
    """The mapping of ``pid`` holding the buffer: by address (forked) or by its shared-memory file (spawned)."""
    maps = smaps(pid)
    if path:
        found = [m for m in maps if m["path"] == path]
        return {k: sum(m.get(k, 0) for m in found) for k in ("Rss", "Private_Clean", "Private_Dirty")}
    return next(m for m in maps if m["start"] <= address < m["end"])  # type: ignore[operator]


def total(pid: int, key: str) -> int:
    """The sum of one smaps field (bytes) over all mappings of ``pid``."""
    return sum(m.get(key, 0) for m in smaps(pid))
