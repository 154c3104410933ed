"""pyarrow filesystems for each store, built from options by meaning (see :mod:`idxlake.schemas.storage`).

Each builder takes the location and its options resolved to meanings (``endpoint``,
``account_key``...) and returns a pyarrow filesystem with bounded retries and timeouts. With an
endpoint or emulator, credentials must be explicit: no builder lets pyarrow fall back to a
cloud credential chain then.
"""

from __future__ import annotations

import datetime
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.fs as pafs

from idxlake.schemas.errors import StorageConfigError

AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
"""The Azurite emulator's published account key (account ``devstoreaccount1``), as delta-rs uses it."""


def local_filesystem(uri: str, options: Mapping[str, str]) -> pafs.FileSystem:
    """The local filesystem (also FUSE mounts such as /Volumes and /dbfs)."""
    return pafs.LocalFileSystem()


def _duration_s(text: str, key: str) -> float:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|sec|secs|seconds?|m|min|mins|minutes?)?\s*", text)
    if not m:
        raise StorageConfigError(f"storage option {key}={text!r}: expected a duration such as 5s or 500ms")
    unit = (m[2] or "s")[0:2]
    return float(m[1]) * (0.001 if unit == "ms" else 60.0 if unit.startswith("m") else 1.0)


def true(value: str | None) -> bool:
    """delta-rs' reading of a boolean option."""
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _authority(endpoint: str, allow_http: bool) -> tuple[str, str]:
    ep = urlparse(endpoint if "://" in endpoint else f"{'http' if allow_http else 'https'}://{endpoint}")
    return ep.netloc, ep.scheme


def s3_filesystem(uri: str, o: Mapping[str, str]) -> pafs.FileSystem:
    """S3 (and S3-compatible endpoints such as MinIO or moto)."""
    kwargs: dict[str, object] = {
        "connect_timeout": _duration_s(o.get("connect_timeout", "5s"), "connect_timeout"),
        "request_timeout": _duration_s(o.get("timeout", "30s"), "timeout"),
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=3),
    }
    if "endpoint" in o:
        kwargs["endpoint_override"], kwargs["scheme"] = _authority(o["endpoint"], true(o.get("allow_http")))
    half = {"access_key_id", "secret_access_key", "session_token"} & o.keys()
    if half and not {"access_key_id", "secret_access_key"} <= o.keys():
        raise StorageConfigError(f"{uri}: {sorted(half)} given without both AWS_ACCESS_KEY_ID and "
                                 "AWS_SECRET_ACCESS_KEY; pass both (otherwise the given one would be dropped silently)")
    if "role_session_name" in o and "role_arn" not in o:
        raise StorageConfigError(f"{uri}: AWS_ROLE_SESSION_NAME needs AWS_ROLE_ARN (it would be dropped silently)")
    if "access_key_id" in o and "secret_access_key" in o:
        kwargs.update(access_key=o["access_key_id"], secret_key=o["secret_access_key"])
        if "session_token" in o:
            kwargs["session_token"] = o["session_token"]
    elif true(o.get("skip_signature")):
        kwargs["anonymous"] = True
    elif "endpoint" in o:
        raise StorageConfigError(
            f"{uri}: an endpoint ({o['endpoint']}) without credentials would fall back to AWS's credential "
            "chain; pass AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_SKIP_SIGNATURE=true for anonymous access")
    if "region" in o:
        kwargs["region"] = o["region"]
    if "role_arn" in o:
        kwargs["role_arn"] = o["role_arn"]
        if "role_session_name" in o:
            kwargs["session_name"] = o["role_session_name"]
    if true(o.get("virtual_hosted")):
        kwargs["force_virtual_addressing"] = True
    return pafs.S3FileSystem(**kwargs)


def _delta_timeouts(o: Mapping[str, str]) -> None:
    """Check ``connect_timeout`` / ``timeout`` where only delta-rs uses them (pyarrow's Azure and GCS clients
    take no timeouts): a bad value is refused as on S3, not passed on to fail later."""
    for key in ("connect_timeout", "timeout"):
        if key in o:
            _duration_s(o[key], key)


def azure_authorities(endpoint: str, account: str, *, path_style: bool, allow_http: bool,
                      where: str) -> tuple[str, str, str]:
    """pyarrow's ``(blob authority, dfs authority, scheme)`` reaching the URLs delta-rs builds from ``endpoint``.

    delta-rs uses an endpoint as the base URL (``{endpoint}/{container}/...``); pyarrow puts the account in
    the path (``{authority}/{account}/...``) or, for an authority starting with ``.``, before it as a host
    name. Both agree for ``http://host:port/{account}`` (Azurite, path style) and for
    ``https://{account}.blob.<cloud suffix>`` (sovereign clouds, private endpoints named after the account).

    Raises:
        StorageConfigError: any other endpoint: the log and the data files would be read from different URLs.
    """
    netloc, scheme = _authority(endpoint, allow_http)
    path = urlparse(endpoint if "://" in endpoint else f"{scheme}://{endpoint}").path.strip("/")
    if path_style or path == account:
        return netloc, netloc, scheme
    if not path and netloc.lower().startswith(f"{account.lower()}."):
        suffix = netloc[len(account):]
        return suffix.replace(".dfs.", ".blob.", 1), suffix.replace(".blob.", ".dfs.", 1), scheme
    raise StorageConfigError(
        f"{where}: Azure endpoint {endpoint} is neither http(s)://HOST[:PORT]/{account} (path style) nor "
        f"https://{account}.blob.SUFFIX: delta-rs and pyarrow would build different URLs from it (the log and the "
        "data files read from different places); give one of those forms")


def azure_filesystem(uri: str, o: Mapping[str, str]) -> pafs.FileSystem:
    """Azure Blob / ADLS Gen2, including the Azurite emulator."""
    _delta_timeouts(o)
    parsed = urlparse(uri)
    account = o.get("account_name") or (parsed.netloc.split("@", 1)[1].split(".", 1)[0]
                                        if "@" in parsed.netloc else None)
    kwargs: dict[str, object] = {}
    endpoint = o.get("endpoint")
    emulator = true(o.get("use_emulator"))
    if emulator:
        account = account or "devstoreaccount1"
        endpoint = endpoint or os.environ.get("AZURITE_BLOB_STORAGE_URL", "http://127.0.0.1:10000")
    if not account:
        raise StorageConfigError(f"{uri}: no Azure storage account: use abfss://CONTAINER@ACCOUNT.dfs.core.windows.net/"
                                 "... or pass AZURE_STORAGE_ACCOUNT_NAME")
    host = parsed.netloc.split("@", 1)[1] if "@" in parsed.netloc else ""
    if endpoint or (host and not host.lower().endswith(".core.windows.net")):  # an emulator, another cloud
        blob, dfs, scheme = azure_authorities(endpoint or f"https://{host}", account, path_style=emulator,
                                              allow_http=true(o.get("allow_http")) or emulator, where=uri)
        kwargs.update(blob_storage_authority=blob, blob_storage_scheme=scheme,
                      dfs_storage_authority=dfs, dfs_storage_scheme=scheme)
    principal = {"client_id", "client_secret", "tenant_id"}
    if o.keys() & (principal - {"client_id"}) and not principal <= o.keys():
        raise StorageConfigError(
            f"{uri}: a service principal needs client_id, client_secret and tenant_id together; missing "
            f"{sorted(principal - o.keys())} (otherwise the others would be dropped silently)")
    if "account_key" in o:
        kwargs["account_key"] = o["account_key"]
    elif "sas_token" in o:
        kwargs["sas_token"] = "?" + o["sas_token"].lstrip("?")  # pyarrow appends it to the URL as it is
    elif {"client_id", "client_secret", "tenant_id"} <= o.keys():
        kwargs.update(client_id=o["client_id"], client_secret=o["client_secret"], tenant_id=o["tenant_id"])
    elif emulator:
        kwargs["account_key"] = AZURITE_KEY
    elif endpoint:
        raise StorageConfigError(
            f"{uri}: an endpoint ({endpoint}) without credentials would fall back to Azure's default credential "
            "chain; pass AZURE_STORAGE_ACCOUNT_KEY (or a SAS token, or use_emulator=true for Azurite)")
    elif "client_id" in o:
        kwargs["client_id"] = o["client_id"]  # a user-assigned managed identity
    return pafs.AzureFileSystem(account, **kwargs)


def _gcs_credentials(uri: str, o: Mapping[str, str]) -> dict[str, object] | None:
    """pyarrow options from a service account given to delta-rs (file path or JSON)."""
    given = o.get("service_account_key") or o.get("service_account") or o.get("application_credentials")
    if given is None:
        return None
    key = next(k for k in ("service_account_key", "service_account", "application_credentials") if o.get(k))
    try:
        text = given if given.lstrip("\ufeff \t\r\n").startswith("{") else Path(given).read_text(encoding="utf-8")
    except (OSError, ValueError) as exc:  # the value only if it looks like a path: it may be the key itself
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        path = given if len(given) < 512 and not re.search(r"[\s{}]|private|BEGIN", given, re.IGNORECASE) else None
        raise StorageConfigError(f"{uri}: cannot read the Google service account file "
                                 + (f"{path} " if path else "") + f"(option {key}): {why}") from exc
    try:
        account = json.loads(text)
    except ValueError as exc:
        raise StorageConfigError(f"{uri}: the Google service account is not JSON: {exc}") from exc
    base = account.get("gcs_base_url")
    if base:
        if not account.get("disable_oauth"):
            raise StorageConfigError(f"{uri}: gcs_base_url {base} without disable_oauth would fetch OAuth tokens "
                                     "from Google; set disable_oauth in the service account JSON")
        authority, scheme = _authority(base, True)
        return {"anonymous": True, "endpoint_override": authority, "scheme": scheme}
    if given == os.environ.get("GOOGLE_APPLICATION_CREDENTIALS"):
        return {}  # pyarrow reads the same file through the environment
    raise StorageConfigError(
        f"{uri}: pyarrow cannot take a Google service-account key as an option; set "
        "GOOGLE_APPLICATION_CREDENTIALS=<key file> in the environment instead (delta-rs and pyarrow both read it)")


def gcs_filesystem(uri: str, o: Mapping[str, str]) -> pafs.FileSystem:
    """Google Cloud Storage, including fake-gcs-server through the service account's ``gcs_base_url``."""
    _delta_timeouts(o)
    kwargs: dict[str, object] = {"retry_time_limit": datetime.timedelta(seconds=15)}
    kwargs.update(_gcs_credentials(uri, o) or {})
    return pafs.GcsFileSystem(**kwargs)
