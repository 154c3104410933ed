"""What changed between two versions of a table: rows per split and label, files, metadata, lineage.

Files present in both versions are the same bytes (Delta files are immutable), so only the
files one version has and the other lacks are read, and only their ``id`` and ``label``
columns (``split`` is the partition value). A row is identified by ``(split, id, label)``:
rows of removed files that reappear in added files are *rewritten* (moved into new files,
e.g. by optimize), the others are *added* or *removed*. Images are never read unless
``content=True``, which adds a sha256 of each image to the row identity, so a rewritten
row whose image changed counts as *changed* (one removed and one added row).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from idxlake.pipeline.inspect.info import iso_time, parse_lineage
from idxlake.schemas import (
    ID,
    IMAGE,
    LABEL,
    META_KEY,
    SPLIT,
    DataCorruptionError,
    DataFile,
    QueryError,
    TableSnapshot,
    open_table,
    snapshot,
)
from idxlake.schemas.versions import VersionRange, range_of

logger = logging.getLogger(__name__)

DIFF_FORMAT = 1
"""Version of the ``diff --json`` document."""

DIGEST = "digest"
_COUNTS = ("from", "to", "added", "removed", "rewritten")


def resolve_point(versions: VersionRange, point: int | str | None, default: int) -> int:
    """A diff end point: a version (``3``, ``"3"``, ``"v3"``), a timestamp, or ``default``."""
    if point is None:
        return default
    if isinstance(point, int):
        return versions.check_version(point)
    text = point.strip()
    digits = text[1:] if text[:1] in "vV" else text
    if digits.lstrip("-").isdigit() and len(digits.lstrip("-")) not in (14, 17):  # 14/17 digits: compact times
        return versions.check_version(int(digits))
    return versions.at(text)


@contextmanager
def _named(snap: TableSnapshot, data_file: DataFile) -> Iterator[None]:
    """Turn a read error of ``data_file`` (page CRC, footer) into one that names table, version and file."""
    try:
        yield
    except FileNotFoundError:
        raise
    except (OSError, pa.ArrowException) as exc:
        raise DataCorruptionError(f"{snap.uri}@v{snap.version}: data file {data_file.path} cannot be read: {exc}; "
                                  f"run `idxlake verify {snap.uri}`") from exc


def _keys(snap: TableSnapshot, files: Sequence[DataFile], *, content: bool, side: str) -> pa.Table:
    """``split, label, id[, digest], side`` of every row of ``files`` (one row group at a time)."""
    fs = snap.filesystem()
    snap.check_files(files)
    parts: list[pa.Table] = []
    columns = [ID, LABEL] + ([IMAGE] if content else [])
    for f in files:
        with _named(snap, f), fs.open_input_file(snap.file_path(f)) as fh:
            pf = pq.ParquetFile(fh, page_checksum_verification=True)
            for i in range(pf.metadata.num_row_groups):
                group = pf.read_row_group(i, columns=columns)
                arrays = {SPLIT: pa.array([f.split] * group.num_rows, pa.string()),
                          LABEL: group[LABEL].cast(pa.int64()), ID: group[ID].cast(pa.int64())}
                if content:
                    arrays[DIGEST] = pa.array([hashlib.sha256(v).hexdigest() if v is not None else None
                                               for v in group[IMAGE].to_pylist()], pa.string())
                arrays[side] = pa.array([1] * group.num_rows, pa.int64())
                parts.append(pa.table(arrays))
    fields = [pa.field(SPLIT, pa.string()), pa.field(LABEL, pa.int64()), pa.field(ID, pa.int64())]
    schema = pa.schema(fields + ([pa.field(DIGEST, pa.string())] if content else []) + [pa.field(side, pa.int64())])
    return pa.concat_tables(parts) if parts else schema.empty_table()


def _label_counts(snap: TableSnapshot, files: Sequence[DataFile]) -> dict[tuple[str, int], int]:
    if not files:
        return {}
    fs = snap.filesystem()
    out: dict[tuple[str, int], int] = {}
    for f in files:
        with _named(snap, f), fs.open_input_file(snap.file_path(f)) as fh:
            labels = pq.ParquetFile(fh, page_checksum_verification=True).read(columns=[LABEL])[LABEL]
        for row in pc.value_counts(labels).to_pylist():
            key = (f.split, int(row["values"]))
            out[key] = out.get(key, 0) + int(row["counts"])
    return out


def _row_changes(removed: pa.Table, added: pa.Table, *, content: bool) -> dict[tuple[str, int], dict[str, int]]:
    """Per (split, label): rows added, removed and rewritten (multiset match on the row identity)."""
    keys = [SPLIT, LABEL, ID] + ([DIGEST] if content else [])
    a = removed.append_column("b", pa.array([0] * removed.num_rows, pa.int64()))
    b = added.append_column("a", pa.array([0] * added.num_rows, pa.int64())).select(a.column_names)
    both = pa.concat_tables([a, b.cast(a.schema)])
    grouped = both.group_by(keys).aggregate([("a", "sum"), ("b", "sum")])
    out: dict[tuple[str, int], dict[str, int]] = {}
    for row in grouped.to_pylist():
        matched = min(row["a_sum"], row["b_sum"])
        entry = out.setdefault((row[SPLIT], row[LABEL]), {"added": 0, "removed": 0, "rewritten": 0})
        entry["rewritten"] += matched
        entry["removed"] += row["a_sum"] - matched
        entry["added"] += row["b_sum"] - matched
    return out


def _changed(removed: pa.Table, added: pa.Table) -> int:
    """Rows ``(split, id)`` removed and added again with another label or image (content mode)."""
    def rows(t: pa.Table) -> set[tuple[Any, ...]]:
        return {(r[SPLIT], r[ID], r[LABEL], r[DIGEST]) for r in t.select([SPLIT, ID, LABEL, DIGEST]).to_pylist()}

    old, new = rows(removed), rows(added)
    return len({(s, i) for s, i, _, _ in old - new} & {(s, i) for s, i, _, _ in new - old})


def _flat(doc: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(doc, dict):
        out: dict[str, Any] = {}
        for key, value in doc.items():
            out.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: doc}


def _metadata(snap: TableSnapshot) -> dict[str, Any]:
    raw = (snap.schema.field(IMAGE).metadata or {}).get(META_KEY.encode(), b"{}")
    return {"name": snap.name, "description": snap.description,
            "columns": [f"{f.name} {f.type}" for f in snap.schema], "idxlake": json.loads(raw)}


def _commit(commit: Mapping[str, Any]) -> dict[str, Any]:
    return {"version": commit.get("version"), "timestamp": iso_time(commit.get("timestamp")),
            "operation": commit.get("operation"), "lineage": parse_lineage(commit)}


def table_diff(table: str, a: int | str | None = None, b: int | str | None = None, *, content: bool = False,
               storage_options: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Compare two versions of a table (default: the previous version with the latest).

    Args:
        table: Table path or URI.
        a: The older end: a version (``3``, ``"v3"``) or a timestamp; default ``b - 1``.
        b: The newer end; default the latest version.
        content: Also compare image bytes (sha256 per row) of the rows in changed files.
        storage_options: Object-store options.

    Returns:
        The JSON-ready diff document (keys in README "idxlake diff").

    Raises:
        TableNotFoundError: no table, or an end point out of the table's range.
        QueryError: no previous version to compare with.
        MissingDataFileError: a changed file of either version is gone (vacuumed).
    """
    history = list(open_table(table, storage_options=storage_options).history())
    versions = range_of(table, history)
    to = resolve_point(versions, b, versions.latest)
    if a is None and to == versions.first:
        raise QueryError(f"{table}: version {to} is the first; there is no previous version to compare with "
                         "(give two versions: idxlake diff TABLE A B)")
    start = resolve_point(versions, a, to - 1)
    old = snapshot(table, version=start, storage_options=storage_options)
    new = snapshot(table, version=to, storage_options=storage_options)
    old_files, new_files = {f.path: f for f in old.files}, {f.path: f for f in new.files}
    removed_files = [f for p, f in old_files.items() if p not in new_files]
    added_files = [f for p, f in new_files.items() if p not in old_files]
    kept_files = [f for p, f in new_files.items() if p in old_files]
    removed = _keys(old, removed_files, content=content, side="a")
    added = _keys(new, added_files, content=content, side="b")
    changes = _row_changes(removed, added, content=content)
    kept = _label_counts(new, kept_files)
    before = {key: kept.get(key, 0) + n for key, n in _label_counts(old, removed_files).items()}
    after = {key: kept.get(key, 0) + n for key, n in _label_counts(new, added_files).items()}
    for key, n in kept.items():
        before.setdefault(key, n)
        after.setdefault(key, n)
    splits: dict[str, Any] = {}
    for split, label in sorted(set(before) | set(after) | set(changes)):
        c = changes.get((split, label), {})
        entry = splits.setdefault(split, {**dict.fromkeys(_COUNTS, 0), "labels": []})
        counts = {"from": before.get((split, label), 0), "to": after.get((split, label), 0),
                  **{k: c.get(k, 0) for k in ("added", "removed", "rewritten")}}
        entry["labels"].append({"label": label, **counts})
        for k in _COUNTS:
            entry[k] += counts[k]
    flat_old, flat_new = _flat(_metadata(old)), _flat(_metadata(new))
    metadata = [{"key": k, "from": flat_old.get(k), "to": flat_new.get(k)}
                for k in sorted(set(flat_old) | set(flat_new)) if flat_old.get(k) != flat_new.get(k)]
    lo, hi = min(start, to), max(start, to)
    commits = [_commit(c) for c in sorted(history, key=lambda c: c.get("version") or 0)
               if lo <= (c.get("version") or 0) <= hi]

    def file_entry(f: DataFile) -> dict[str, Any]:
        return {"path": f.path, "split": f.split, "rows": f.num_records, "bytes": f.size}

    totals = {k: sum(s[k] for s in splits.values()) for k in _COUNTS}
    return {
        "diff_format": DIFF_FORMAT,
        "table": table,
        "from": {"version": start, "timestamp": iso_time(versions.timestamp_of(start))},
        "to": {"version": to, "timestamp": iso_time(versions.timestamp_of(to))},
        "content": content,
        "rows": {**totals, "changed": _changed(removed, added) if content else None},
        "splits": splits,
        "files": {"added": [file_entry(f) for f in added_files], "removed": [file_entry(f) for f in removed_files],
                  "kept": len(kept_files)},
        "metadata": metadata,
        "commits": commits,
    }

