"""One storage layer: a location (URI) plus delta-rs style options -> delta-rs options and a pyarrow filesystem.

Every reader and writer of idxlake goes through this module: the Delta log and commits
through delta-rs (:func:`delta_options`), the Parquet data files and IDX sources through
pyarrow (:func:`pyarrow_filesystem`). Both see the same options, in deltalake's own key
names (any case, see :mod:`idxlake.schemas.storage_keys`); environment variables are read
where deltalake reads them (``AWS_*``, ``AZURE_*``, ``GOOGLE_*`` and ``AZURITE_BLOB_STORAGE_URL``).

Guarantees:

* A given option is never dropped silently: an unknown key, a key of another store, or a
  key pyarrow could not honour is a :class:`StorageConfigError`.
* With an endpoint or emulator option, no path falls back to a cloud credential chain:
  credentials must be given (or anonymous access asked for) explicitly.
* Unreachable storage fails fast: delta-rs and pyarrow get bounded retries and timeouts
  unless the options set their own.

Databricks paths: ``dbfs:/x`` is ``/dbfs/x``; ``/dbfs/...`` and ``/Volumes/...`` are FUSE
mounts without hard links (see :func:`check_writable`).
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote, urlparse

import pyarrow.fs as pafs

from idxlake.schemas import storage_keys as keys
from idxlake.schemas.errors import StorageAccessError, StorageConfigError, StorageUnreachableError
from idxlake.schemas.storage_fs import azure_filesystem, gcs_filesystem, local_filesystem, s3_filesystem, true

logger = logging.getLogger(__name__)

WorkerContext = Literal["fork", "forkserver", "spawn"]
FAST_FAIL_OPTIONS: dict[str, str] = {"connect_timeout": "5s", "max_retries": "3", "retry_timeout": "15s"}
"""delta-rs client defaults for object stores, unless the options set them: fail in seconds, not minutes."""
FUSE_PREFIXES = ("/dbfs/", "/Volumes/")
GCS_CREDENTIALS = frozenset({"service_account", "service_account_key", "application_credentials"})
"""Option meanings that carry a Google service account (whose ``gcs_base_url`` is an endpoint)."""
Options = dict[str, str]


@dataclass(frozen=True)
class Store:
    """One kind of storage: its URI schemes, option keys and how pyarrow reaches it.

    Attributes:
        name: ``local``, ``s3``, ``azure`` or ``gcs``.
        env_prefix: Environment variables delta-rs reads for this store (``""``: none).
        mapped: Option meaning -> aliases honoured by both delta-rs and pyarrow.
        delta_only: Keys that only tune delta-rs' commits or HTTP client.
        context: Multiprocessing start method for DataLoader workers reading this store.
        build: ``(uri, options by meaning) -> pyarrow filesystem``.
    """

    name: str
    env_prefix: str
    mapped: Mapping[str, tuple[str, ...]]
    delta_only: tuple[str, ...]
    context: WorkerContext
    build: Callable[[str, Mapping[str, str]], pafs.FileSystem]

    def aliases(self) -> dict[str, str]:
        """``alias -> meaning`` of every mapped key (lower case)."""
        return keys.alias_table(self.mapped) if self.name != "local" else {}

    def known(self) -> list[str]:
        """Every key accepted for this store, sorted."""
        extra = keys.CLIENT_DELTA_ONLY if self.name != "local" else ()
        return sorted({*self.aliases(), *self.delta_only, *extra})


STORES: dict[str, Store] = {
    "local": Store("local", "", {}, keys.LOCAL_DELTA_ONLY, "fork", local_filesystem),
    "s3": Store("s3", "AWS_", keys.S3_MAPPED, keys.S3_DELTA_ONLY, "fork", s3_filesystem),
    "azure": Store("azure", "AZURE_", keys.AZURE_MAPPED, keys.AZURE_DELTA_ONLY, "forkserver", azure_filesystem),
    "gcs": Store("gcs", "GOOGLE_", keys.GCS_MAPPED, keys.GCS_DELTA_ONLY, "fork", gcs_filesystem),
}
"""Store name -> :class:`Store`."""

SCHEMES: dict[str, str] = {
    "": "local", "file": "local", "dbfs": "local",
    "s3": "s3", "s3a": "s3",
    "az": "azure", "abfs": "azure", "abfss": "azure",
    "gs": "gcs",
}
"""URI scheme -> store name: the one registry of supported locations (``""`` is a local path)."""


def normalize(uri: str) -> str:
    """The location as delta-rs and pyarrow should see it: ``dbfs:/x`` becomes ``/dbfs/x``."""
    uri = str(uri)
    if uri.lower().startswith("dbfs:"):
        rest = uri[5:].lstrip("/")
        return "/" + rest if rest.startswith("Volumes/") else "/dbfs/" + rest  # a volume's URI form is /Volumes/...
    return uri


def _scheme(uri: str) -> str:
    scheme = urlparse(uri).scheme.lower()
    return "" if len(scheme) == 1 else scheme  # C:\ on Windows is a local path


def store_of(uri: str) -> Store:
    """The :class:`Store` of a location.

    Raises:
        StorageConfigError: for a scheme idxlake does not support, listing the supported ones.
    """
    scheme = _scheme(normalize(uri))
    if scheme not in SCHEMES:
        supported = ", ".join(f"{s}:/" if s == "dbfs" else f"{s}://" for s in SCHEMES if s)
        supported += ", local paths, /Volumes/..., /dbfs/..."
        raise StorageConfigError(f"{uri}: unsupported storage scheme {scheme!r}; supported: {supported}")
    return STORES[SCHEMES[scheme]]


def check_options(uri: str, options: Mapping[str, str] | None) -> Options:
    """Validate options for ``uri``'s store; returns them as given (keys untouched).

    Raises:
        StorageConfigError: an option unknown to the store or that pyarrow could not honour.
    """
    store = store_of(uri)
    known = set(store.known())
    bad = sorted(k for k in (options or {}) if k.lower() not in known)
    if bad:
        raise StorageConfigError(
            f"{uri}: storage option(s) {bad} are not understood for {store.name} storage (or cannot be honoured "
            f"by both delta-rs and pyarrow); known keys, any case: {', '.join(store.known()) or 'none'}")
    return dict(options or {})


def resolved_options(uri: str, options: Mapping[str, str] | None) -> Options:
    """Options by meaning (``endpoint``, ``account_key``...): the environment first, then ``options``."""
    store = store_of(uri)
    aliases = store.aliases()
    out: Options = {}
    if store.env_prefix:
        for name, value in sorted(os.environ.items()):
            if name.startswith(store.env_prefix) and name.lower() in aliases:
                out[aliases[name.lower()]] = value
    for key, value in check_options(uri, options).items():
        if key.lower() in aliases:
            out[aliases[key.lower()]] = value
    return out


def check_location(uri: str) -> None:
    """Refuse a local table path that delta-rs does not read back as written.

    Raises:
        StorageConfigError: a local path with a ``%XX`` escape (delta-rs decodes ``a%41`` to ``aA``: it
            writes the table in one folder and looks for it in another), ``#`` or ``?`` (read as the
            URL's fragment or query: ``history()`` comes back empty, so commits cannot be confirmed).
    """
    if store_of(uri).name != "local" or normalize(uri).lower().startswith("file:"):
        return
    bad = re.search(r"%[0-9A-Fa-f]{2}|[#?]", uri)
    if bad:
        raise StorageConfigError(
            f"{uri}: delta-rs reads {bad.group()!r} in a local table path as URL syntax (the table would not read "
            "back as written); use a folder name without '%XX', '#' or '?'")


def delta_options(uri: str, options: Mapping[str, str] | None) -> Options | None:
    """The ``storage_options`` to give deltalake for ``uri``: every given option, plus fast-fail defaults."""
    check_location(uri)
    opts = check_options(uri, options)
    resolved = resolved_options(uri, options)
    if "endpoint" in resolved or true(resolved.get("use_emulator")) or GCS_CREDENTIALS & resolved.keys():
        store_of(uri).build(uri, resolved)  # the same credential checks: no chain behind an endpoint
    if store_of(uri).name != "local":
        given = {k.lower() for k in opts}
        opts.update({k: v for k, v in FAST_FAIL_OPTIONS.items() if k not in given})
    return opts or None


def fs_path(uri: str) -> str:
    """``uri`` in the terms of its pyarrow filesystem (``bucket/key``, ``container/path`` or a local path)."""
    uri = normalize(uri)
    parsed = urlparse(uri)
    scheme = _scheme(uri)
    if scheme == "":
        return uri
    if scheme == "file":
        return unquote(parsed.path)
    container = parsed.netloc.split("@", 1)[0]
    store_of(uri)
    return f"{container}{unquote(parsed.path)}".rstrip("/")


def pyarrow_filesystem(uri: str, storage_options: Mapping[str, str] | None = None) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem reaching ``uri`` with ``storage_options`` (delta-rs style), and the path in it.

    Raises:
        StorageConfigError: unsupported scheme or option, or options that would reach a cloud
            credential chain although an endpoint or emulator was given.
    """
    uri = normalize(uri)
    store = store_of(uri)
    return store.build(uri, resolved_options(uri, storage_options)), fs_path(uri)


def worker_context(uri: str) -> WorkerContext:
    """The multiprocessing start method for DataLoader workers reading ``uri``.

    ``fork`` where the pyarrow filesystem survives it when created after the fork (local, S3,
    GCS); ``forkserver`` for Azure, whose pyarrow client aborts in forked children (SIGABRT).
    """
    return store_of(uri).context


def is_fuse_mount(uri: str) -> bool:
    """True for Databricks FUSE paths (``/dbfs/...``, ``/Volumes/...``, ``dbfs:/...``): no hard links."""
    path = fs_path(uri) if store_of(uri).name == "local" else ""  # file:///Volumes/... too
    if sys.platform == "darwin" and path.startswith("/Volumes"):
        return False  # macOS mounts its disks there
    return any(path.startswith(p) or path == p.rstrip("/") for p in FUSE_PREFIXES)


def check_writable(uri: str, options: Mapping[str, str] | None) -> None:
    """Refuse a commit that delta-rs cannot make atomic: a FUSE mount without ``allow_unsafe_rename``.

    With ``allow_unsafe_rename=true`` the commit runs in single-writer mode and a warning says so.

    Raises:
        StorageConfigError: a Databricks FUSE path without the single-writer option.
    """
    check_location(uri)
    unsafe = {k.lower(): v for k, v in (options or {}).items()}
    single_writer = true(unsafe.get("allow_unsafe_rename") or unsafe.get("mount_allow_unsafe_rename"))
    if single_writer:
        logger.warning("%s: single-writer mode (allow_unsafe_rename): a concurrent writer's commit can be "
                       "silently overwritten; make sure nothing else writes this table", uri)
    elif is_fuse_mount(uri):
        raise StorageConfigError(fuse_hint(uri))


def fuse_hint(uri: str) -> str:
    """The one-line refusal for a commit on a mount without hard links."""
    return (f"{uri}: this mount has no hard links (a Databricks /Volumes or /dbfs FUSE path?), so Delta commits "
            "cannot be atomic; write to the volume's cloud URI (abfss://, s3://, gs://) instead, or, if this is "
            "the only writer, pass --storage-option allow_unsafe_rename=true")


ANSI_ESCAPE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")
"""CSI sequences (colours, cursor moves), OSC sequences (titles, links) and two-byte escapes."""
_UNREACHABLE = re.compile(r"error sending request|tcp connect error|connection (refused|reset)|"
                          r"error trying to connect|could(n'?t| not) connect|timed out|dns error|"
                          r"failed to lookup address|retry policy exhausted", re.IGNORECASE)
"""Transport failures: the storage did not answer (matched on the message with the location removed)."""
_REFUSED = re.compile(r"status( code)?:? 40[13]\b|\b40[13] (Forbidden|Unauthorized)|HTTP status client error \(40[13]|"
                      r"unauthori[sz]ed|forbidden|Authorization(Permission)?(Failure|Mismatch)|"
                      r"AuthenticationFailed|AccessDenied|InvalidAccessKeyId|SignatureDoesNotMatch|ExpiredToken|"
                      r"lacked the necessary privileges", re.IGNORECASE)
"""The storage answered and refused: credentials or permissions."""


SECRET_PARAMETER = re.compile(
    r"((?:aws_|azure_storage_|google_)?(?:sig|x-amz-signature|x-amz-security-token|x-amz-credential|x-goog-signature|"
    r"x-goog-credential|access_token|session_token|security_token|token|sas_token|sas_key|client_secret|account_key|"
    r"access_key|master_key|secret_access_key|service_account_key|private_key)['\"]?\s*[:=]\s*['\"]?)[^&\s'\",;)}]+"
    r"|(SharedKey(?:Lite)? [\w-]+:)[A-Za-z0-9+/=]+", re.IGNORECASE)
"""URL query parameters and ``key=value`` pairs that carry secrets (an Azure SAS ``sig``, S3/GCS presigned
signatures): client libraries put whole request URLs into their error messages."""


def redact(text: str) -> str:
    """``text`` with the values of :data:`SECRET_PARAMETER` replaced by ``REDACTED``."""
    return SECRET_PARAMETER.sub(lambda m: f"{m.group(1) or m.group(2)}REDACTED", text)


def one_line(exc: BaseException) -> str:
    """``exc`` as one line, without the ANSI colours and arrows of delta-rs' error chains, secrets redacted."""
    return redact(" ".join(ANSI_ESCAPE.sub("", str(exc)).replace("↳", " ").split())) or type(exc).__name__


def storage_error(uri: str, exc: BaseException) -> StorageAccessError | StorageUnreachableError | None:
    """The idxlake error for a storage failure: :class:`StorageAccessError` when the storage refused the
    credentials, :class:`StorageUnreachableError` when it did not answer, else ``None`` (the caller's)."""
    text = one_line(exc)
    probe = text
    for path in {normalize(uri), fs_path(uri)}:  # a path holding "connect" is no answer (whole path tokens only)
        probe = re.sub(rf"(?<![\w.%-]){re.escape(path)}(?![\w.%-])", " ", probe)
    if _REFUSED.search(probe):
        return StorageAccessError(f"{uri}: the storage refused the request ({text[:300]}); check the credentials "
                                  "(an expired SAS token or session? the wrong key?) and their permissions on it")
    if not _UNREACHABLE.search(probe) or "non-2xx" in probe or "rename" in probe.lower():
        return None
    return StorageUnreachableError(f"{uri}: storage did not answer ({text[:300]}); check the endpoint, "
                                   "the network and the storage options")
