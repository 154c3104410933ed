"""Which filesystem a local path is on (Linux ``/proc/self/mounts``), for what may be memory-mapped.

A mapped page whose read fails raises ``SIGBUS`` and kills the process where ``read`` would
raise an error. On a local disk that takes a disk error or a file truncated in place; on a FUSE
daemon (Databricks' ``/dbfs``, ``/Volumes``), NFS, SMB or Lustre it takes a network hiccup or
another host's ``VACUUM`` (NFS ``ESTALE``). So only files on the local filesystems below are mapped.
"""

from __future__ import annotations

import os

MAPPABLE = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs", "zfs", "tmpfs", "overlay", "ramfs"})
"""Filesystem types whose files are memory-mapped (local block devices and memory)."""


def _unescape(field: str) -> str:
    # /proc/self/mounts writes space, tab, newline and backslash as octal escapes (\040 ...)
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 4 <= len(field) and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mount_table(text: str) -> list[tuple[str, str]]:
    """``(mount point, filesystem type)`` of each line of a ``/proc/self/mounts`` text, in order."""
    rows = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 3:
            rows.append((_unescape(fields[1]), fields[2]))
    return rows


def fs_type(path: str, table: list[tuple[str, str]]) -> str | None:
    """The type of the filesystem holding ``path`` (absolute, symlinks resolved): the last-mounted of the
    longest mount points containing it, or ``None`` when no mount point does."""
    best, kind = -1, None
    for point, fstype in table:
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= best:
            best, kind = len(point), fstype
    return kind


def mappable(paths: list[str]) -> bool:
    """Whether every path is on a filesystem of :data:`MAPPABLE` (``False`` when the mount table cannot be read)."""
    try:
        with open("/proc/self/mounts", encoding="utf-8", errors="replace") as fh:
            table = mount_table(fh.read())
    except OSError:
        return False
    dirs = {os.path.dirname(os.path.realpath(p)) for p in paths}
    return all(fs_type(d, table) in MAPPABLE for d in dirs)
