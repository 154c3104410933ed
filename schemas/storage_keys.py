"""The storage options idxlake understands, per store: deltalake's (object_store's) own key names.

Each store lists, by meaning, the aliases delta-rs accepts for a key (matched in any case).
``MAPPED`` keys are honoured by both delta-rs (the Delta log and commits) and the pyarrow
filesystem (the Parquet and IDX files). ``DELTA_ONLY`` keys only tune delta-rs' commits or
its HTTP client and do not change what pyarrow reads or writes. Any other key is refused
(:func:`idxlake.schemas.storage.check_options`): delta-rs itself ignores unknown keys, and a
key pyarrow could not honour would otherwise be dropped silently on the data files.
"""

from __future__ import annotations

from collections.abc import Mapping

CLIENT_MAPPED: dict[str, tuple[str, ...]] = {
    "allow_http": ("allow_http",),
    "connect_timeout": ("connect_timeout",),
    "timeout": ("timeout",),
}
"""HTTP client keys every object store takes. pyarrow honours the timeouts on S3 only: on Azure and GCS they
tune delta-rs' client (the log, commits), and the data files keep pyarrow's own (values are checked alike)."""

CLIENT_DELTA_ONLY: tuple[str, ...] = (
    "max_retries", "retry_timeout", "pool_idle_timeout", "pool_max_idle_per_host", "http1_only", "http2_only",
    "user_agent", "backoff_config.init_backoff", "backoff_config.max_backoff", "backoff_config.base",
)
"""Retry and connection-pool tuning of delta-rs' client (pyarrow retries with its own policy)."""

S3_MAPPED: dict[str, tuple[str, ...]] = {
    "access_key_id": ("aws_access_key_id", "access_key_id"),
    "secret_access_key": ("aws_secret_access_key", "secret_access_key"),
    "session_token": ("aws_session_token", "aws_token", "session_token", "token"),
    "region": ("aws_region", "region", "aws_default_region", "default_region"),
    "endpoint": ("aws_endpoint_url", "aws_endpoint", "endpoint_url", "endpoint"),
    "virtual_hosted": ("aws_virtual_hosted_style_request", "virtual_hosted_style_request"),
    "skip_signature": ("aws_skip_signature", "skip_signature"),
    "role_arn": ("aws_role_arn", "aws_s3_assume_role_arn"),
    "role_session_name": ("aws_role_session_name", "aws_s3_role_session_name"),
    "allow_http": ("aws_allow_http",),
}
S3_DELTA_ONLY: tuple[str, ...] = (
    "aws_s3_locking_provider", "delta_dynamo_table_name", "aws_conditional_put", "conditional_put",
    "aws_copy_if_not_exists", "copy_if_not_exists", "aws_s3_allow_unsafe_rename", "aws_disable_tagging",
    "disable_tagging", "aws_checksum_algorithm", "checksum_algorithm", "aws_imdsv1_fallback", "imdsv1_fallback",
    "aws_metadata_endpoint", "metadata_endpoint", "aws_s3_pool_idle_timeout_seconds",
    "aws_sts_pool_idle_timeout_seconds", "aws_s3_get_internal_server_error_retries", "aws_force_credential_load",
    "aws_unsigned_payload", "unsigned_payload",
)

AZURE_MAPPED: dict[str, tuple[str, ...]] = {
    "account_name": ("azure_storage_account_name", "account_name"),
    "account_key": ("azure_storage_account_key", "azure_storage_access_key", "azure_storage_master_key",
                    "account_key", "access_key", "master_key"),
    "sas_token": ("azure_storage_sas_key", "azure_storage_sas_token", "sas_key", "sas_token"),
    "client_id": ("azure_storage_client_id", "azure_client_id", "client_id"),
    "client_secret": ("azure_storage_client_secret", "azure_client_secret", "client_secret"),
    "tenant_id": ("azure_storage_tenant_id", "azure_storage_authority_id", "azure_tenant_id", "azure_authority_id",
                  "tenant_id", "authority_id"),
    "use_emulator": ("azure_storage_use_emulator", "use_emulator"),
    "endpoint": ("azure_storage_endpoint", "azure_endpoint", "endpoint"),
    "use_azure_cli": ("azure_use_azure_cli", "use_azure_cli"),
    "allow_http": ("azure_allow_http",),
}
AZURE_DELTA_ONLY: tuple[str, ...] = ("azure_disable_tagging", "disable_tagging")

GCS_MAPPED: dict[str, tuple[str, ...]] = {
    "service_account": ("google_service_account", "service_account", "google_service_account_path",
                        "service_account_path"),
    "service_account_key": ("google_service_account_key", "service_account_key"),
    "application_credentials": ("google_application_credentials",),
}
GCS_DELTA_ONLY: tuple[str, ...] = ()

LOCAL_DELTA_ONLY: tuple[str, ...] = ("allow_unsafe_rename", "mount_allow_unsafe_rename")
"""delta-rs' single-writer commit mode for mounts without hard links (FUSE, /Volumes, /dbfs)."""


def alias_table(mapped: Mapping[str, tuple[str, ...]]) -> dict[str, str]:
    """``alias (lower case) -> meaning`` for a store's mapped keys plus the client keys."""
    out = {alias: meaning for meaning, aliases in CLIENT_MAPPED.items() for alias in aliases}
    out.update({alias: meaning for meaning, aliases in mapped.items() for alias in aliases})
    return out
