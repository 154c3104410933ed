"""What a table holds and where it came from: the ``info`` document and the ``history`` list.

Both are plain JSON-ready data (``idxlake info --json`` prints :func:`table_info` as is);
the CLI formats them for people. ``info`` reads the Delta log, the Parquet footers and the
``split``/``label`` columns only, never the images. Its keys are documented in
``schemas/README.md`` and stable within :data:`INFO_FORMAT`.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from idxlake.schemas import LABEL, PARTITION_BY, SPLIT, TableSnapshot, open_table, snapshot_of
from idxlake.schemas.versions import Timestamp

logger = logging.getLogger(__name__)

INFO_FORMAT = 1
"""Version of the ``info --json`` document; bumped only for incompatible changes."""


_BULKY_PARAMETERS = frozenset({"metadata"})
"""Commit parameters left out of history entries (``metadata`` repeats the whole schema)."""


def iso_time(millis: int | float | None) -> str | None:
    """A Delta timestamp (ms since the epoch) as ISO 8601 UTC, e.g. ``2026-11-24T10:00:00.123Z``."""
    if millis is None:
        return None
    stamp = datetime.fromtimestamp(millis / 1000, tz=timezone.utc)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_lineage(commit: Mapping[str, Any]) -> dict[str, Any] | None:
    """The idxlake lineage JSON of a commit (its ``userMetadata``), or ``None``."""
    raw = commit.get("userMetadata")
    if not raw:
        return None
    try:
        doc = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        return {"raw": raw}
    return doc if isinstance(doc, dict) else {"raw": raw}


def _commit_entry(commit: Mapping[str, Any]) -> dict[str, Any]:
    params = commit.get("operationParameters") or {}
    return {
        "version": commit.get("version"),
        "timestamp": iso_time(commit.get("timestamp")),
        "operation": commit.get("operation"),
        "parameters": {k: v for k, v in params.items() if v is not None and k not in _BULKY_PARAMETERS},
        "metrics": dict(commit.get("operationMetrics") or {}),
        "engine": commit.get("engineInfo") or commit.get("clientVersion"),
        "lineage": parse_lineage(commit),
    }


def table_history(table: str, *, limit: int | None = None,
                  storage_options: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """The commits of a table, newest first.

    Args:
        table: Table path or URI.
        limit: Keep only the newest ``limit`` commits.
        storage_options: Object-store options.

    Returns:
        One dict per commit: ``version``, ``timestamp`` (ISO UTC), ``operation``,
        ``parameters``, ``metrics``, ``engine`` and ``lineage`` (the idxlake lineage JSON
        of ingests, else ``None``).

    Raises:
        TableNotFoundError: no table at ``table``.
        QueryError: ``limit`` below 1.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        from idxlake.schemas import QueryError

        raise QueryError(f"history limit must be an integer >= 1, got {limit!r}")
    dt = open_table(table, storage_options=storage_options)
    entries = [_commit_entry(c) for c in dt.history(limit)]
    return sorted(entries, key=lambda e: -(e["version"] or 0))


def _row_groups(snap: TableSnapshot) -> dict[str, dict[str, Any]]:
    """Per split: row groups, largest group, codec (from the Parquet footers)."""
    import pyarrow.parquet as pq

    fs = snap.filesystem()
    out: dict[str, dict[str, Any]] = {}
    for data_file in snap.files:
        md = pq.ParquetFile(snap.file_path(data_file), filesystem=fs).metadata
        entry = out.setdefault(data_file.split, {"row_groups": 0, "max_row_group_rows": 0, "codecs": set()})
        entry["row_groups"] += md.num_row_groups
        for i in range(md.num_row_groups):
            group = md.row_group(i)
            entry["max_row_group_rows"] = max(entry["max_row_group_rows"], group.num_rows)
            entry["codecs"].update(group.column(j).compression for j in range(group.num_columns))
    return out


def _label_counts(snap: TableSnapshot) -> dict[str, list[tuple[Any, int]]]:
    table = snap.dataset().to_table(columns=[SPLIT, LABEL])
    counts = table.group_by([SPLIT, LABEL]).aggregate([([], "count_all")])
    out: dict[str, list[tuple[Any, int]]] = {}
    for row in counts.sort_by([(SPLIT, "ascending"), (LABEL, "ascending")]).to_pylist():
        out.setdefault(row[SPLIT], []).append((row[LABEL], row["count_all"]))
    return out


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def table_info(table: str, *, version: int | None = None, storage_options: Mapping[str, str] | None = None,
               as_of: Timestamp | None = None) -> dict[str, Any]:
    """The ``info`` document of a table version (see ``schemas/README.md`` for every key).

    Args:
        table: Table path or URI.
        version: Version to describe; latest when ``None``.
        storage_options: Object-store options.
        as_of: Instead of ``version``: the version that was latest at this timestamp.

    Returns:
        A JSON-ready dict.

    Raises:
        TableNotFoundError: no table or version.
        SchemaMismatchError: not an idxlake table.
    """
    latest = open_table(table, storage_options=storage_options)
    dt = latest if version is None and as_of is None else open_table(
        table, version=version, as_of=as_of, storage_options=storage_options)
    snap = snapshot_of(dt, uri=table, storage_options=storage_options)
    meta = snap.meta
    protocol = dt.protocol()
    # history() of a time-travelled DeltaTable numbers commits from the loaded version down
    # (deltalake 1.6), so read it from the latest table and filter.
    commits = [c for c in latest.history() if (c.get("version") or 0) <= snap.version]
    commits.sort(key=lambda c: -(c.get("version") or 0))
    this = next((c for c in commits if c.get("version") == snap.version), None)
    ingest = next((c for c in commits if (parse_lineage(c) or {}).get("sources") is not None), None)
    labels = _label_counts(snap)
    groups = _row_groups(snap)
    warnings: list[str] = []
    splits: dict[str, Any] = {}
    for name in sorted(set(meta.splits) | set(labels) | {f.split for f in snap.files}):
        split_meta = meta.splits.get(name)
        counts = labels.get(name, [])
        rows = sum(n for _, n in counts)
        if split_meta is not None and split_meta.rows != rows:
            warnings.append(f"split {name!r}: metadata records {split_meta.rows} rows, the data holds {rows}")
        files = snap.files_of([name])
        group = groups.get(name, {"row_groups": 0, "max_row_group_rows": 0})
        splits[name] = {
            "rows": rows,
            "labels": [{"label": label, "name": _class_name(meta.class_names, label), "rows": n}
                       for label, n in counts],
            "files": len(files),
            "bytes": sum(f.size for f in files),
            "row_groups": group["row_groups"],
            "mean": _finite(split_meta.stats.mean) if split_meta else None,
            "std": _finite(split_meta.stats.std) if split_meta else None,
            "verified": split_meta.verified if split_meta else False,
            "sources": [dict(s.__dict__) for s in split_meta.sources] if split_meta else [],
        }
    mean, std = meta.normalization()
    codecs = sorted(set().union(*(g["codecs"] for g in groups.values()))) if groups else []
    md = dt.metadata()
    return {
        "info_format": INFO_FORMAT,
        "table": table,
        "name": snap.name,
        "description": snap.description,
        "version": snap.version,
        "timestamp": iso_time(this.get("timestamp")) if this else None,
        "created": iso_time(md.created_time),
        "protocol": {
            "min_reader_version": protocol.min_reader_version,
            "min_writer_version": protocol.min_writer_version,
            "reader_features": sorted(protocol.reader_features or []),
            "writer_features": sorted(protocol.writer_features or []),
        },
        "configuration": dict(md.configuration or {}),
        "partition_columns": list(md.partition_columns or PARTITION_BY),
        "columns": [{"name": f.name, "type": str(f.type), "nullable": f.nullable,
                     "comment": (f.metadata or {}).get(b"comment", b"").decode() or None} for f in snap.schema],
        "format_version": meta.format_version,
        "dataset": meta.dataset,
        "image": {"shape": list(meta.shape), "dtype": meta.dtype, "record_bytes": meta.record_nbytes,
                  "transposed": meta.transposed, "scale": meta.scale},
        "label_dtype": meta.label_dtype,
        "class_names": list(meta.class_names),
        "rows": sum(s["rows"] for s in splits.values()),
        "splits": splits,
        "files": {
            "count": len(snap.files),
            "bytes": sum(f.size for f in snap.files),
            "row_groups": sum(g["row_groups"] for g in groups.values()),
            "max_row_group_rows": max((g["max_row_group_rows"] for g in groups.values()), default=0),
            "codecs": codecs,
        },
        "normalization": {"mean": _finite(mean), "std": _finite(std)},
        "last_commit": _commit_entry(this) if this else None,
        "last_ingest": _commit_entry(ingest) if ingest else None,
        "warnings": warnings,
    }


def _class_name(names: tuple[str, ...], label: Any) -> str | None:
    if isinstance(label, int) and 0 <= label < len(names):
        return names[label]
    return None

