"""Writing idxlake tables: ordered Parquet files + exactly one Delta commit.

delta-rs' ``write_deltalake`` reorders record batches across row groups (seen on
deltalake 1.6), which would scramble the ``id`` order of the files. So idxlake
writes the Parquet files itself with pyarrow (exact row groups in id order, no
dictionary or statistics on ``image``, statistics on ``id``/``label``) and then
commits them with delta-rs' transaction API in ONE commit that also carries the new
schema metadata, the lineage and a transaction id. Files of a failed attempt are deleted;
the table stays at its previous version. Every data page carries a CRC checksum
(``write_page_checksum``), which every idxlake reader verifies.

After the commit call, the outcome is checked against the log
(:mod:`idxlake.pipeline.ingest.landing`): an error raised after the commit landed (e.g. the
connection dropped on the reply) is logged as a warning and the write succeeds; a commit
whose files vanished meanwhile raises :class:`DataCorruptionError` at once.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from idxlake.pipeline.ingest.compression import PYARROW_CODECS, Codec, page_options
from idxlake.schemas import (
    ID,
    IMAGE,
    LABEL,
    META_KEY,
    PARTITION_BY,
    SPLIT,
    CommitConflictError,
    CommitUncertainError,
    DataCorruptionError,
    StorageConfigError,
    TableNotFoundError,
    check_writable,
    delta_options,
    fuse_hint,
    normalize,
    open_table,
    pyarrow_filesystem,
)

logger = logging.getLogger(__name__)

TARGET_FILE_BYTES = 128 << 20
"""Roll to a new data file after about this many uncompressed image bytes."""


@dataclass
class PendingFiles:
    """Data files written for a commit that has not happened yet (deleted on failure)."""

    fs: pafs.FileSystem
    root: str
    table: str = ""
    storage_options: Mapping[str, str] | None = field(default=None, repr=False)
    actions: list[Any] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    root_existed: bool = True

    def discard(self) -> None:
        """Delete every file written so far (best effort)."""
        for path in self.paths:
            try:
                self.fs.delete_file(path)
            except FileNotFoundError:
                pass  # never created, or already gone
            except OSError as exc:  # pragma: no cover - best effort
                logger.warning("could not remove uncommitted file %s: %s", path, exc)
        self._prune_empty_dirs()
        self.paths.clear()
        self.actions.clear()

    def _prune_empty_dirs(self) -> None:
        """Remove the ``split=...`` folders (and a new table's root) the discarded files leave empty.

        Only local filesystems have real folders; object stores have none to remove.
        """
        if not isinstance(self.fs, pafs.LocalFileSystem):
            return
        parents = sorted({p.rsplit("/", 1)[0] for p in self.paths if "/" in p}, key=len, reverse=True)
        for folder in [*parents] + ([] if self.root_existed else [self.root]):
            try:
                if not os.listdir(folder):
                    os.rmdir(folder)
            except OSError:
                continue  # not there, not empty, or not ours to remove

    def landed(self) -> bool:
        """True if a commit holding these files is in the table (e.g. Ctrl-C right after committing).

        Errs on the side of True (keep the files) when the table cannot be read.
        """
        if not self.actions:
            return False
        try:
            dt = open_table(self.table, storage_options=self.storage_options)
            live = set(pa.table(dt.get_add_actions(flatten=True)).column("path").to_pylist())
        except TableNotFoundError:
            return False
        except Exception as exc:  # cannot tell: keep the files (an orphan beats a broken version)
            logger.warning("%s: cannot check whether the commit landed (%s); keeping its files", self.table, exc)
            return True
        return any(a.path in live for a in self.actions)

    def __enter__(self) -> PendingFiles:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        """On any error, delete the files unless a commit already holds them, or may (the log could not be read)."""
        if exc_type is not None and not issubclass(exc_type, CommitUncertainError) and not self.landed():
            self.discard()


def _stats(rows: int, ids: list[int], labels: list[Any]) -> str:
    return json.dumps({
        "numRecords": rows,
        "minValues": {ID: min(ids), LABEL: min(labels)} if rows else {},
        "maxValues": {ID: max(ids), LABEL: max(labels)} if rows else {},
        "nullCount": {ID: 0, LABEL: 0, IMAGE: 0},
    })


def write_split(pending: PendingFiles, split: str, batches: Iterable[pa.RecordBatch], *, file_schema: pa.Schema,
                row_group_rows: int, codec: Codec, compression_level: int | None = None,
                target_file_bytes: int = TARGET_FILE_BYTES) -> None:
    """Write one split's batches (without the ``split`` column) into rolling Parquet files.

    Every batch becomes exactly one row group, so batches must hold ``row_group_rows`` rows
    (the last may be shorter). ``compression_level``: the codec's level (``None``: its default).
    """
    from deltalake.transaction import AddAction

    writer: pq.ParquetWriter | None = None
    sink: pa.NativeFile | None = None
    rel = path = ""
    rows, nbytes = 0, 0
    ids: list[pa.Array] = []
    labels: list[pa.Array] = []

    def close() -> None:
        nonlocal writer
        if writer is None or sink is None:
            return
        writer.close()
        sink.close()  # ParquetWriter leaves a sink it did not open; closing completes an S3 upload
        writer = None
        info = pending.fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound or info.size is None:
            raise CommitConflictError(
                f"{pending.table}: data file {rel} vanished right after it was written (deleted by a concurrent "
                "`vacuum --full`?); nothing was committed, run the write again")
        size = info.size
        pending.actions.append(AddAction(rel, size, {SPLIT: split}, int(time.time() * 1000), True,
                                         _stats(rows, ids, labels)))

    try:
        for batch in batches:
            if writer is not None and nbytes >= target_file_bytes:
                close()
            if writer is None:
                rel = f"{SPLIT}={split}/part-{len(pending.actions):05d}-{uuid.uuid4()}-c000.{codec.lower()}.parquet"
                path = f"{pending.root}/{rel}"
                pending.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
                sink = pending.fs.open_output_stream(path)
                pending.paths.append(path)  # only files that were created (no warning on a read-only target)
                writer = pq.ParquetWriter(
                    sink, file_schema, compression=PYARROW_CODECS[codec], compression_level=compression_level,
                    write_page_checksum=True, use_dictionary=[LABEL], write_statistics=[ID, LABEL], store_schema=True,
                    **page_options(codec, row_group_rows))
                rows, nbytes, ids, labels = 0, 0, [], []
            writer.write_batch(batch, row_group_size=row_group_rows)
            lo_hi = pc.min_max(batch.column(LABEL))
            ids += [batch.column(ID)[0].as_py(), batch.column(ID)[-1].as_py()]
            labels += [lo_hi["min"].as_py(), lo_hi["max"].as_py()]
            rows += batch.num_rows
            nbytes += batch.column(IMAGE).nbytes
        close()
    finally:  # an error mid-file: close what is open so the file exists and can be discarded
        if writer is not None:
            writer.close()
        if sink is not None and not sink.closed:
            sink.close()


def open_pending(table: str, storage_options: Mapping[str, str] | None) -> PendingFiles:
    """Start a set of uncommitted files under ``table``; use as a context manager::

        with open_pending(table, options) as pending:
            write_split(pending, ...)
            commit(table, dt, pending, ...)

    Leaving the block with an error deletes the files, unless the commit had already landed.
    """
    check_writable(table, storage_options)
    fs, root = pyarrow_filesystem(table, storage_options)
    root = root.rstrip("/")
    existed = not isinstance(fs, pafs.LocalFileSystem) or os.path.isdir(root)
    return PendingFiles(fs, root, table, storage_options, root_existed=existed)


def commit(table: str, dt: Any, pending: PendingFiles, *, schema: pa.Schema,
           mode: Literal["create", "replace", "append", "overwrite"], splits: Sequence[str],
           storage_options: Mapping[str, str] | None, name: str | None, description: str,
           lineage: Mapping[str, Any]) -> int:
    """Commit ``pending`` files as ONE Delta version carrying ``schema`` (with its metadata).

    Args:
        table: Table URI.
        dt: The ``DeltaTable`` the ingest planned against (``None`` to create the table).
        pending: Files to add.
        schema: Table schema with the new ``image`` metadata.
        mode: ``create`` a new table; ``replace`` the files of ``splits``; ``append`` files;
            ``overwrite`` every file.
        splits: The splits being written.
        storage_options: Object-store options.
        name: Table name (on create).
        description: Table description (on create).
        lineage: JSON-able lineage, stored as the commit's ``userMetadata``.

    Returns:
        The committed version.

    Raises:
        CommitConflictError: another writer created the table or committed first (nothing written).
        CommitUncertainError: the commit call failed and the log cannot be read to learn its fate.
        DataCorruptionError: the commit landed but some of its files are gone.
    """
    from deltalake import CommitProperties, Schema
    from deltalake.exceptions import CommitFailedError, DeltaError
    from deltalake.transaction import create_table_with_add_actions

    from idxlake.pipeline.ingest.landing import TXN_KEY, check_committed_files, find_commit, new_txn

    txn = new_txn()
    props = CommitProperties(custom_metadata={"userMetadata": json.dumps({**lineage, "txn": txn}, sort_keys=True),
                                              TXN_KEY: txn})
    read_version = None if dt is None else dt.version()
    try:
        if mode == "create":
            try:
                create_table_with_add_actions(
                    normalize(table), Schema.from_arrow(schema), pending.actions, mode="error",
                    partition_by=list(PARTITION_BY), name=name, description=description,
                    storage_options=delta_options(table, storage_options), commit_properties=props)
            except DeltaError as exc:
                if "exist" in str(exc).lower():
                    raise CommitConflictError(f"{table}: another writer created the table meanwhile; nothing "
                                              "was written, run it again") from exc
                raise
        else:
            removals: dict[str, list[tuple[str, str, Any]] | None] = {
                "replace": [(SPLIT, "in", list(splits))],
                "append": [(SPLIT, "in", [])],  # removes nothing: an append that may update the metadata
                "overwrite": None,
            }
            try:
                dt.create_write_transaction(pending.actions, mode="overwrite", schema=schema,
                                            partition_by=list(PARTITION_BY), partition_filters=removals[mode],
                                            commit_properties=props)
            except CommitFailedError as exc:
                raise CommitConflictError(
                    f"{table}: another writer committed after version {read_version} while this one was running "
                    f"({exc}); nothing was written, run it again") from exc
    except CommitConflictError:
        raise
    except BaseException as exc:  # the call failed, but the commit may have landed: ask the log
        version = find_commit(table, txn, after=read_version, storage_options=storage_options)
        if version is None:
            if isinstance(exc, Exception):
                _raise_without_hard_links(table, exc)
            raise
        logger.warning("%s: the commit landed as version %d although the call reported an error (%s: %s)",
                       table, version, type(exc).__name__, exc)
        if not isinstance(exc, Exception):  # Ctrl-C and the like still stop the program, after saying so
            raise
    else:
        version = find_commit(table, txn, after=read_version, storage_options=storage_options)
        if version is None:  # pragma: no cover - delta-rs returned without committing
            raise DataCorruptionError(f"{table}: delta-rs reported success but no commit carries transaction {txn}")
    check_committed_files(table, version, pending.fs, pending.paths, pending.root)
    return version


def _raise_without_hard_links(table: str, exc: Exception) -> None:
    """A commit that failed for lack of hard links (FUSE mounts) becomes one line with the way out."""
    text = str(exc)
    if "rename" in text.lower() and ("not permitted" in text.lower() or "not supported" in text.lower()):
        raise StorageConfigError(fuse_hint(table)) from exc


def file_schema(schema: pa.Schema) -> pa.Schema:
    """The schema of the Parquet files: no partition columns, and no table metadata JSON.

    The ``idxlake`` metadata is only final at commit time and lives in the Delta schema; copies
    in Parquet footers would go stale, so files carry column comments only.
    """
    fields = [f.with_metadata({k: v for k, v in (f.metadata or {}).items() if k != META_KEY.encode()})
              for f in schema if f.name not in PARTITION_BY]
    return pa.schema(fields, metadata=schema.metadata)


def image_array(chunk: np.ndarray, record_nbytes: int) -> pa.BinaryArray:
    """Zero-copy binary array over a C-contiguous chunk of equally sized records."""
    n = len(chunk)
    offsets = pa.py_buffer(np.arange(0, (n + 1) * record_nbytes, record_nbytes, dtype=np.int32))
    return pa.Array.from_buffers(pa.binary(), n, [None, offsets, pa.py_buffer(chunk.reshape(-1).view(np.uint8))])
