"""Comparing sources with what a table already holds (by the hashes its lineage records).

``replace`` of sources the table already holds is a no-op; ``append`` of an images file a split
already holds is refused (rerunning an append that did land, e.g. after a misleading error,
would duplicate its rows). Cheap checks come first: the md5 of the stored file, then the
uncompressed size, and only then the full sha256.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from idxlake.pipeline.idx.read import IdxFile, scan_idx
from idxlake.pipeline.ingest.scan import ScannedSplit
from idxlake.pipeline.ingest.sources import SplitSource
from idxlake.schemas import SourceError, TableMeta


def already_holds(old: TableMeta, sources: Mapping[str, SplitSource]) -> bool:
    """True when ``old`` holds exactly this content (sha256 and size of every file) for every split.

    Cheap checks first: identical stored bytes (md5 of the file, no decompression), then the
    uncompressed size from the header; only files that could be equal are fully hashed.
    """
    for split, src in sources.items():
        recorded = old.splits.get(split)
        if recorded is None or len(recorded.sources) != 2:
            return False
        pairs = (("images", src.images, recorded.sources[0]), ("labels", src.labels, recorded.sources[1]))
        for role, path, rec in pairs:
            if rec.role != role:
                return False
            if file_md5(path) == rec.md5:
                continue
            with IdxFile(path) as f:
                if f.header.nbytes + f.header.payload_nbytes != rec.nbytes:
                    return False
            if scan_idx(path)[1].sha256 != rec.sha256:
                return False
    return True


def validate_fully(sources: Mapping[str, SplitSource]) -> None:
    """Decode every source file to its end (raises IdxFormatError for a truncated or corrupt one)."""
    for src in sources.values():
        scan_idx(src.images)
        scan_idx(src.labels)


def _duplicate_message(table: str, split: str, name: str, version: int | None) -> str:
    return (f"{table}: split {split!r} already holds {name} (same sha256, recorded in the lineage; table at "
            f"version {version}); appending it again would duplicate its rows (an earlier ingest that reported "
            "an error may have landed: see `idxlake history`). Use --mode replace to rewrite the split, or "
            "--allow-duplicate to append it anyway")


def refuse_duplicate_early(old: TableMeta, sources: Mapping[str, SplitSource], table: str,
                            version: int | None) -> None:
    """Refuse an append whose images file is byte-identical (md5 of the stored file) to one already in the split."""
    for split, src in sources.items():
        recorded = old.splits.get(split)
        if recorded is None:
            continue
        md5s = {rec.md5 for rec in recorded.sources if rec.role == "images"}
        if md5s and file_md5(src.images) in md5s:
            raise SourceError(_duplicate_message(table, split, src.images.name, version))


def refuse_duplicate(old: TableMeta, scanned: Mapping[str, ScannedSplit], table: str, version: int | None) -> None:
    """Refuse an append whose images content (sha256 of the uncompressed IDX) is already in the split."""
    for split, s in scanned.items():
        recorded = old.splits.get(split)
        if recorded is not None and s.images_digest.sha256 in {r.sha256 for r in recorded.sources
                                                               if r.role == "images"}:
            raise SourceError(_duplicate_message(table, split, s.source.images.name, version))


def file_md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


ROW_PRESERVING_OPERATIONS = frozenset({
    "OPTIMIZE", "VACUUM START", "VACUUM END", "SET TBLPROPERTIES", "UNSET TBLPROPERTIES", "ADD CONSTRAINT",
    "DROP CONSTRAINT", "UPGRADE PROTOCOL", "SET TABLE PROPERTIES", "ADD FEATURE", "DROP FEATURE",
})
"""Delta operations that cannot change rows; any other commit of another writer may have (``UPDATE``,
``CREATE OR REPLACE TABLE AS SELECT``, ``COPY INTO``, ``CLONE``, ``RESTORE``...)."""


def changed_elsewhere(history: list[dict[str, Any]], splits: Iterable[str], *, txn_key: str) -> list[str]:
    """The splits whose rows another writer may have changed since idxlake last wrote them.

    Args:
        history: ``DeltaTable.history()`` (newest first).
        splits: Splits to judge.
        txn_key: The ``commitInfo`` key every idxlake commit carries.

    Returns:
        The splits, in order, behind whose last idxlake write there is a foreign data-changing commit (an
        UPDATE from Spark or delta-rs, a DELETE...): the table metadata still records the sources, the rows
        are not theirs any more.
    """
    pending, stale = set(splits), []
    for commit in history:
        if not pending:
            break
        if commit.get(txn_key):  # ours: the splits it wrote are as idxlake wrote them
            try:
                written = json.loads(commit.get("userMetadata") or "{}").get("rows", {})
            except ValueError:
                written = {}
            pending -= set(written)
        elif str(commit.get("operation", "")).upper() not in ROW_PRESERVING_OPERATIONS:
            stale += sorted(pending)
            pending.clear()
    return [s for s in splits if s in stale]
