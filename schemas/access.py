"""Opening an idxlake table: a pinned, picklable snapshot of its live files.

Both the pipeline (export, SQL, show) and the loaders read table data through a
:class:`TableSnapshot`: the version is resolved once from the Delta log, the live
data files are listed with their split and row counts, and Parquet is then read
with pyarrow alone. (deltalake's own runtime must not run inside forked DataLoader
workers, and its ``to_pyarrow_dataset`` filesystem aborts the interpreter at exit
on deltalake 1.6, so neither is used for reading.)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlparse

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs

from idxlake.schemas.errors import (
    MissingDataFileError,
    NotATableError,
    SchemaMismatchError,
    StorageUnreachableError,
    TableNotFoundError,
)
from idxlake.schemas.storage import (
    delta_options,
    fs_path,
    normalize,
    one_line,
    pyarrow_filesystem,
    storage_error,
    store_of,
)
from idxlake.schemas.table import SPLIT, TableMeta, meta_from_schema
from idxlake.schemas.versions import Timestamp, as_version, version_range

if TYPE_CHECKING:
    from deltalake import DeltaTable

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataFile:
    """One live Parquet file of a pinned table version.

    Attributes:
        uri: Absolute URI (or local path) of the file.
        split: Value of the ``split`` partition column for every row of the file.
        size: Bytes on storage.
        num_records: Rows in the file (from the Delta log).
        path: The file's path relative to the table root, as in the Delta log.
        min_id: Smallest ``id`` in the file (Delta statistics), if recorded.
    """

    uri: str
    split: str
    size: int
    num_records: int
    path: str = ""
    min_id: int | None = None


@dataclass(frozen=True)
class TableSnapshot:
    """A pinned version of an idxlake table; cheap to pickle into DataLoader workers.

    Attributes:
        uri: Table URI as given.
        version: The pinned Delta version.
        meta: The table's :class:`TableMeta`.
        schema: Arrow schema of the table (with field metadata).
        files: Live data files of ``version``.
        storage_options: Options for object stores (passed to pyarrow and delta-rs).
        name: Table name from the Delta metadata, if set.
        description: Table description from the Delta metadata, if set.
    """

    uri: str
    version: int
    meta: TableMeta
    schema: pa.Schema
    files: tuple[DataFile, ...]
    storage_options: Mapping[str, str] | None = field(default=None, repr=False)  # keys and tokens: never printed
    name: str | None = None
    description: str | None = None
    _fs: dict[int, pafs.FileSystem] = field(default_factory=dict, repr=False, compare=False)

    def filesystem(self) -> pafs.FileSystem:
        """The pyarrow filesystem holding the data files, created once per process (keyed by pid:
        an S3 client inherited by a forked DataLoader worker hangs there)."""
        pid = os.getpid()
        fs = self._fs.get(pid)
        if fs is None:
            self._fs.clear()  # another process's: inherited through fork or pickled
            fs = self._fs[pid] = pyarrow_filesystem(self.uri, self.storage_options)[0]
        return fs

    def file_path(self, data_file: DataFile) -> str:
        """Path of ``data_file`` within :meth:`filesystem`."""
        return fs_path(data_file.uri)

    def check_files(self, files: Sequence[DataFile]) -> None:
        """Raise :class:`MissingDataFileError` if a file of the pinned version is gone."""
        fs = self.filesystem()
        try:
            infos = fs.get_file_info([self.file_path(f) for f in files])
        except OSError as exc:  # pyarrow's: refused credentials, an endpoint that does not answer
            raise (storage_error(self.uri, exc) or StorageUnreachableError(
                f"{self.uri}: cannot list the data files of version {self.version} ({one_line(exc)[:300]})")) from exc
        for info, data_file in zip(infos, files, strict=True):
            if info.type == pafs.FileType.NotFound:
                try:
                    note = version_range(self.uri, storage_options=self.storage_options).vacuum_note(self.version)
                except Exception:  # the log is unreadable too: report the missing file all the same
                    note = None
                raise MissingDataFileError(
                    f"{self.uri}: data file {data_file.uri} of version {self.version} is missing "
                    + (f"(version {self.version} was {note})" if note else "(vacuumed or deleted?)")
                    + "; read a newer version or restore the file")

    def files_of(self, splits: Sequence[str] | None = None) -> tuple[DataFile, ...]:
        """Live files, restricted to ``splits`` when given."""
        return tuple(f for f in self.files if splits is None or f.split in splits)

    def dataset(self, splits: Sequence[str] | None = None) -> pads.FileSystemDataset:
        """A pyarrow dataset over the live files, with ``split`` as a partition column.

        Args:
            splits: Keep only these splits (partition pruning); ``None`` keeps all.

        Raises:
            MissingDataFileError: if a file of the pinned version no longer exists.
        """
        files = self.files_of(splits)
        fs = self.filesystem()
        paths = [self.file_path(f) for f in files]
        self.check_files(files)
        if not files:
            return pads.dataset(self.schema.empty_table())
        verified = pads.ParquetFileFormat(  # every page's CRC is checked as it is read (DuckDB reads this too)
            default_fragment_scan_options=pads.ParquetFragmentScanOptions(page_checksum_verification=True))
        return pads.FileSystemDataset.from_paths(
            paths, schema=self.schema, format=verified, filesystem=fs,
            partitions=[pads.field(SPLIT) == f.split for f in files])


def check_not_a_file(uri: str) -> None:
    """Refuse a local table location that is a plain file (delta-rs would say "does not exist").

    Raises:
        NotATableError: ``uri`` names an existing local file.
    """
    if store_of(uri).name == "local" and os.path.isfile(fs_path(uri)):
        raise NotATableError(f"{uri}: is a file, not a Delta table (a table is a directory holding _delta_log/); "
                             "give a directory path")


DIRECT_VERSIONS = 1_000_000
"""Versions below this are opened directly; above, the latest first: delta-rs walks towards a version it is
asked for one commit at a time (2**63-1 ran for minutes), and the table's range says at once if it exists."""


def open_table(uri: str, *, version: int | None = None, as_of: Timestamp | None = None,
               storage_options: Mapping[str, str] | None = None) -> DeltaTable:
    """Open a Delta table, turning delta-rs errors into idxlake ones.

    Args:
        uri: Table path or URI.
        version: Version to load; latest when ``None``.
        as_of: Load the latest version committed at or before this timestamp instead
            (see :mod:`idxlake.schemas.versions`); not together with ``version``.
        storage_options: delta-rs storage options.

    Returns:
        A ``deltalake.DeltaTable``.

    Raises:
        NotATableError: ``uri`` is a local plain file.
        TableNotFoundError: if there is no Delta table at ``uri``, or no such ``version`` or
            ``as_of`` (the message names the table's range of versions and commit times).
    """
    check_not_a_file(uri)
    from deltalake import DeltaTable
    from deltalake.exceptions import DeltaError
    from deltalake.exceptions import TableNotFoundError as DeltaTableNotFound

    options = delta_options(uri, storage_options)
    location = normalize(uri)
    number = as_version(version)
    if number is not None and as_of is None and 0 <= number < DIRECT_VERSIONS:
        try:  # the common case: one log read
            return DeltaTable(location, version=number, storage_options=options)
        except DeltaTableNotFound as exc:
            raise TableNotFoundError(f"{uri}: no Delta table here; create it with `idxlake ingest SOURCE {uri}`") \
                from exc
        except (DeltaError, OSError) as exc:
            unreachable = storage_error(uri, exc)
            if unreachable is not None:
                raise unreachable from exc
            # otherwise explained below, with the table's range
    try:
        latest = DeltaTable(location, storage_options=options)
    except DeltaTableNotFound as exc:
        raise TableNotFoundError(f"{uri}: no Delta table here; create it with `idxlake ingest SOURCE {uri}`") from exc
    except (DeltaError, OSError) as exc:
        unreachable = storage_error(uri, exc)
        if unreachable is not None:
            raise unreachable from exc
        raise TableNotFoundError(f"{uri}: cannot open Delta table: {one_line(exc)}") from exc
    if version is None and as_of is None:
        return latest
    versions = version_range(uri, table=latest)
    wanted = versions.resolve(version=version, as_of=as_of)
    if wanted == latest.version():
        return latest
    try:
        return DeltaTable(location, version=wanted, storage_options=options)
    except DeltaError as exc:
        raise TableNotFoundError(f"{uri}: {versions.describe()}; cannot load version {wanted}: {one_line(exc)}") \
            from exc


def snapshot(uri: str, *, version: int | None = None, as_of: Timestamp | None = None,
             storage_options: Mapping[str, str] | None = None) -> TableSnapshot:
    """Pin a version of an idxlake table: schema, metadata and live files, from the Delta log only.

    Args:
        uri: Table path or URI.
        version: Version to pin; latest when ``None``.
        as_of: Pin the latest version committed at or before this timestamp instead.
        storage_options: delta-rs storage options.

    Raises:
        TableNotFoundError: no table / version.
        SchemaMismatchError: the table does not follow the idxlake contract or uses Delta
            reader features (deletion vectors, column mapping) this reader cannot honour.
    """
    dt = open_table(uri, version=version, as_of=as_of, storage_options=storage_options)
    return snapshot_of(dt, uri=uri, storage_options=storage_options)


def data_file_uri(table: str, path: str, listed: str) -> str:
    """Where a data file is, in the terms of :func:`~idxlake.schemas.storage.fs_path`.

    For a local table, the table path as given joined with the log's relative ``path`` (a URI
    reference: percent-decoded once). delta-rs's ``file_uris()`` percent-encodes the table's own
    path there (``my%20tables/...``), which is no local file; cloud URIs (``listed``) are decoded by
    ``fs_path`` already.
    """
    location = normalize(table)
    if urlparse(path).scheme or path.startswith("/") or store_of(location).name != "local":
        return listed  # an absolute path in the log (a shallow clone), or a cloud URI
    root = fs_path(location) if location.lower().startswith("file:") else location  # file:// decoded once
    return f"{root.rstrip('/')}/{unquote(path)}"


def unsupported_features(dt: DeltaTable) -> list[str]:
    """The Delta reader features of ``dt`` that idxlake's Parquet readers cannot honour (sorted)."""
    protocol = dt.protocol()
    features = set(protocol.reader_features or ())
    if protocol.min_reader_version == 2:
        features.add("columnMapping")
    return sorted(features & {"columnMapping", "deletionVectors"})


def snapshot_of(dt: DeltaTable, *, uri: str, storage_options: Mapping[str, str] | None = None) -> TableSnapshot:
    """Like :func:`snapshot`, from an already opened ``DeltaTable``."""
    unsupported = unsupported_features(dt)
    if unsupported:
        raise SchemaMismatchError(
            f"{uri}: table needs Delta reader features {unsupported} "
            f"(reader version {dt.protocol().min_reader_version}); idxlake reads plain Parquet tables. "
            "Copy what you need elsewhere and delete it, or write the data to another path with `idxlake ingest`.")
    schema = pa.schema(dt.schema().to_arrow())
    meta = meta_from_schema(schema, where=uri)
    actions = pa.table(dt.get_add_actions(flatten=True)).to_pylist()
    uris = dt.file_uris()
    if not all(unquote(u).endswith(unquote(a["path"])) for u, a in zip(uris, actions, strict=True)):
        by_path = {unquote(a["path"]): a for a in actions}  # pragma: no cover - delta-rs lists both alike
        actions = [next(a for p, a in by_path.items() if unquote(u).endswith(p)) for u in uris]
    files = [DataFile(uri=data_file_uri(uri, a["path"], u), split=a.get(f"partition.{SPLIT}") or "",
                      size=int(a["size_bytes"]), num_records=int(a["num_records"] or 0), path=a["path"],
                      min_id=a.get("min.id"))
             for u, a in zip(uris, actions, strict=True)]
    md = dt.metadata()
    files.sort(key=lambda f: (f.split, f.uri))
    return TableSnapshot(uri=uri, version=dt.version(), meta=meta, schema=schema, files=tuple(files),
                         storage_options=dict(storage_options) if storage_options else None,
                         name=md.name, description=md.description)
