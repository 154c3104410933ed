"""The one error hierarchy of idxlake.

Every error the project raises on purpose derives from :class:`IdxlakeError` and
also from the builtin it resembles (as huggingface/datasets does), so callers can
catch either ``IdxlakeError`` or e.g. ``ValueError``. Messages name the file (or
table, row, column), what was found, what was expected and what to do.
"""

from __future__ import annotations


class IdxlakeError(Exception):
    """Base class of every deliberate idxlake error."""


class IdxFormatError(IdxlakeError, ValueError):
    """An IDX file is malformed: bad magic, dims, payload size or compression."""


class SourceError(IdxlakeError, ValueError):
    """A set of source files is unusable: missing pair, mismatched counts, bad labels."""


class TableNotFoundError(IdxlakeError, FileNotFoundError):
    """No Delta table (or no such version) at the given location."""


class NotATableError(IdxlakeError, NotADirectoryError):
    """The table location is a plain file: a Delta table is a directory (or prefix) holding ``_delta_log/``."""


class TableExistsError(IdxlakeError, FileExistsError):
    """The table already exists and the write mode forbids touching it."""


class SchemaMismatchError(IdxlakeError, ValueError):
    """A table does not follow the idxlake table contract, or is incompatible with a write."""


class QueryError(IdxlakeError, ValueError):
    """A SQL statement failed or was refused (e.g. it would modify the table)."""


class MaintenanceError(IdxlakeError, ValueError):
    """A maintenance operation (optimize, vacuum) was refused, e.g. a retention below the table's minimum."""


class IngestConfigError(IdxlakeError, ValueError):
    """An ingest option is invalid, e.g. a compression level outside its codec's range."""


class LoaderConfigError(IdxlakeError, ValueError):
    """A loader was configured wrongly: unknown column, empty selection, bad batch size."""


class TimeTravelError(IdxlakeError, ValueError):
    """A time-travel request is malformed: text that is no timestamp, or a version and a timestamp together.
    (A version or time outside the table's range is :class:`TableNotFoundError`.)"""


class MissingDataFileError(IdxlakeError, FileNotFoundError):
    """A data file referenced by a pinned table version is gone (e.g. vacuumed)."""


class MissingExtraError(IdxlakeError, ImportError):
    """An optional dependency is not installed; the message names the idxlake extra that brings it."""


class CommitConflictError(IdxlakeError, RuntimeError):
    """Another writer committed to the table while this write was running; nothing was written."""


class StorageConfigError(IdxlakeError, ValueError):
    """A table or source location cannot be used as given: unknown scheme, unknown or unusable option."""


class StorageUnreachableError(IdxlakeError, RuntimeError):
    """The storage behind a location did not answer (endpoint down, wrong port, no network)."""


class StorageAccessError(IdxlakeError, PermissionError):
    """The storage answered but refused the request: wrong or expired credentials, or no permission (401/403)."""


class DownloadError(IdxlakeError, RuntimeError):
    """A download failed on every mirror (no network, HTTP errors, cut connections)."""


class ChecksumMismatchError(DownloadError):
    """Downloaded bytes do not match the registry's hashes; nothing was kept."""


class DataCorruptionError(IdxlakeError, RuntimeError):
    """Stored data does not read back as written: a page checksum, a footer or a content hash failed,
    or a committed version references files that are gone. The message names table, version and file."""


class CommitUncertainError(IdxlakeError, RuntimeError):
    """A commit was attempted but the log could not be read afterwards to learn whether it landed."""
