"""The storage layer: schemes, options, no credential-chain fallback, fast failure on unreachable storage."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pyarrow.fs as pafs
import pytest
import stores
from conftest import SyntheticSource
from hypothesis import given
from hypothesis import strategies as st

from idxlake import info
from idxlake.cli import main
from idxlake.schemas import (
    SCHEMES,
    STORES,
    StorageAccessError,
    StorageConfigError,
    StorageUnreachableError,
    check_writable,
    delta_options,
    fs_path,
    is_fuse_mount,
    normalize,
    pyarrow_filesystem,
    snapshot,
    store_of,
    worker_context,
)


def test_every_registered_scheme_has_a_store_and_unknown_ones_list_them() -> None:
    assert {store_of(f"{s}://b/t" if s else "/tmp/t").name for s in SCHEMES} == {"local", "s3", "azure", "gcs"}
    with pytest.raises(StorageConfigError, match=r"unsupported storage scheme 'hdfs'.*s3://.*abfss://.*gs://"):
        store_of("hdfs://namenode/t")


def test_cli_unknown_scheme_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "hdfs://namenode/t"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("idxlake info: error: hdfs://namenode/t: unsupported storage scheme 'hdfs'; supported: "
                          "file://, dbfs:/, s3://, s3a://, az://, abfs://, abfss://, gs://, local paths")
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(("uri", "path"), [
    ("/data/t", "/data/t"), ("file:///data/t", "/data/t"), ("s3://b/t/x.parquet", "b/t/x.parquet"),
    ("s3a://b/t", "b/t"), ("az://lake/t", "lake/t"), ("abfs://lake@acct.dfs.core.windows.net/t", "lake/t"),
    ("abfss://lake@acct.dfs.core.windows.net/t/a%20b", "lake/t/a b"), ("gs://lake/t", "lake/t"),
    ("dbfs:/mnt/t", "/dbfs/mnt/t"), ("/Volumes/cat/sch/vol/t", "/Volumes/cat/sch/vol/t"),
])
def test_paths_in_pyarrow_terms(uri: str, path: str) -> None:
    assert fs_path(uri) == path


def test_databricks_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    # a volume's URI form is dbfs:/Volumes/..., its POSIX path /Volumes/... (no /dbfs on serverless compute)
    assert normalize("dbfs:/Volumes/c/s/v/t") == "/Volumes/c/s/v/t" and normalize("DBFS:/mnt/a") == "/dbfs/mnt/a"
    assert is_fuse_mount("dbfs:/t") and is_fuse_mount("/Volumes/c/s/v/t") and is_fuse_mount("/dbfs/t")
    assert is_fuse_mount("file:///Volumes/c/s/v/t") and is_fuse_mount("dbfs:/Volumes/c/s/v/t")
    with monkeypatch.context() as m:
        m.setattr("sys.platform", "darwin")
        assert not is_fuse_mount("/Volumes/MyUSB/t") and is_fuse_mount("/dbfs/t")  # macOS mounts disks there
    assert not is_fuse_mount("/tmp/Volumes/t") and not is_fuse_mount("s3://b/Volumes")
    with pytest.raises(StorageConfigError, match=r"no hard links.*cloud URI.*allow_unsafe_rename=true"):
        check_writable("/Volumes/c/s/v/t", None)
    check_writable("/Volumes/c/s/v/t", {"ALLOW_UNSAFE_RENAME": "true"})  # the single-writer mode
    check_writable("/tmp/t", None)


def test_options_any_case_and_none_dropped() -> None:
    opts = {"aws_endpoint_url": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "k", "Aws_Secret_Access_Key": "s",
            "AWS_S3_LOCKING_PROVIDER": "dynamodb"}
    given = delta_options("s3://b/t", opts)
    assert given is not None and {k: given[k] for k in opts} == opts  # passed to delta-rs as given
    assert given["connect_timeout"] == "5s" and given["max_retries"] == "3"  # fast-fail defaults
    assert delta_options("s3://b/t", {**opts, "MAX_RETRIES": "7"})["MAX_RETRIES"] == "7"  # type: ignore[index]
    fs, path = pyarrow_filesystem("s3://b/t", opts)
    assert isinstance(fs, pafs.S3FileSystem) and path == "b/t"
    with pytest.raises(StorageConfigError, match=r"\['AWS_REGION'\] are not understood for azure.*account_name"):
        delta_options("az://lake/t", {"use_emulator": "true", "AWS_REGION": "x"})
    with pytest.raises(StorageConfigError, match="aws_server_side_encryption"):
        pyarrow_filesystem("s3://b/t", {**opts, "aws_server_side_encryption": "aws:kms"})
    with pytest.raises(StorageConfigError, match="bogus"):
        delta_options("/tmp/t", {"bogus": "1"})


def test_an_endpoint_never_falls_back_to_a_cloud_credential_chain(tmp_path: Path) -> None:
    with pytest.raises(StorageConfigError, match=r"AWS's credential chain.*AWS_SKIP_SIGNATURE"):
        pyarrow_filesystem("s3://b/t", {"AWS_ENDPOINT_URL": "http://127.0.0.1:9"})
    with pytest.raises(StorageConfigError, match=r"AWS's credential chain"):  # delta-rs gets the same check
        delta_options("s3://b/t", {"AWS_ENDPOINT_URL": "http://127.0.0.1:9"})
    with pytest.raises(StorageConfigError, match=r"Azure's default credential chain"):
        info("az://lake/t", storage_options={"account_name": "a", "endpoint": "http://127.0.0.1:9/a"})
    anonymous, _ = pyarrow_filesystem("s3://b/t", {"AWS_ENDPOINT_URL": "http://127.0.0.1:9",
                                                   "AWS_SKIP_SIGNATURE": "true"})
    assert isinstance(anonymous, pafs.S3FileSystem)
    with pytest.raises(StorageConfigError, match="Azure's default credential chain"):
        pyarrow_filesystem("az://lake/t", {"account_name": "a", "endpoint": "http://127.0.0.1:9/a"})
    emulator, _ = pyarrow_filesystem("az://lake/t", {"use_emulator": "true"})  # the published Azurite key
    assert isinstance(emulator, pafs.AzureFileSystem)
    account = tmp_path / "sa.json"
    account.write_text(json.dumps({"gcs_base_url": "http://127.0.0.1:9"}))
    with pytest.raises(StorageConfigError, match="disable_oauth"):
        pyarrow_filesystem("gs://lake/t", {"google_service_account": str(account)})
    account.write_text(json.dumps({"type": "service_account", "private_key": "x"}))
    with pytest.raises(StorageConfigError, match="GOOGLE_APPLICATION_CREDENTIALS"):
        pyarrow_filesystem("gs://lake/t", {"GOOGLE_SERVICE_ACCOUNT": str(account)})


def test_worker_context_per_store() -> None:
    # Forked workers abort inside pyarrow's Azure client (SIGABRT, std::invalid_argument): measured.
    assert worker_context("az://lake/t") == worker_context("abfss://c@a.dfs.core.windows.net/t") == "forkserver"
    assert {worker_context(u) for u in ("/tmp/t", "s3://b/t", "gs://b/t", "dbfs:/t")} == {"fork"}


@pytest.mark.parametrize(("uri", "options"), [
    ("s3://lake/t", {"AWS_ENDPOINT_URL": "http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "k",
                     "AWS_SECRET_ACCESS_KEY": "s", "AWS_REGION": "us-east-1", "AWS_ALLOW_HTTP": "true"}),
    ("az://lake/t", {"account_name": "devstoreaccount1", "access_key": stores.AZURITE_KEY,
                     "endpoint": "http://127.0.0.1:{port}/devstoreaccount1", "allow_http": "true"}),
    ("gs://lake/t", {"google_service_account_key": '{{"gcs_base_url": "http://127.0.0.1:{port}", '
                                                   '"disable_oauth": true, "client_email": "", "private_key": "", '
                                                   '"private_key_id": ""}}'}),
])
def test_unreachable_storage_fails_fast(uri: str, options: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    port = stores.free_port()  # nothing listens there
    options = {k: v.format(port=port) for k, v in options.items()}
    start = time.monotonic()
    with pytest.raises(StorageUnreachableError, match=rf"{uri}: storage did not answer .*127\.0\.0\.1:{port}"):
        info(uri, storage_options=options)
    assert time.monotonic() - start < 10
    args = ["info", uri] + [a for k, v in options.items() for a in ("--storage-option", f"{k}={v}")]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"idxlake info: error: {uri}: storage did not answer") and "\x1b[" not in err
    assert len(err.strip().splitlines()) == 1


@given(st.lists(st.sampled_from(sorted({*STORES["azure"].known()} - {"use_emulator", "azure_storage_use_emulator",
                                                                     "endpoint", "azure_storage_endpoint",
                                                                     "azure_endpoint"})),
                min_size=1, max_size=6, unique=True),
       st.randoms(use_true_random=False))
def test_known_keys_in_any_case_reach_delta_rs_unchanged(keys: list[str], rnd: random.Random) -> None:
    options = {"".join(c.upper() if rnd.random() < 0.5 else c for c in k): "v" for k in keys}
    given = delta_options("az://lake/t", options)
    assert given is not None and {k: given[k] for k in options} == options
    unknown = {**options, "AZURE_NOT_A_KEY": "v"}
    with pytest.raises(StorageConfigError, match="AZURE_NOT_A_KEY"):
        delta_options("az://lake/t", unknown)


@pytest.mark.parametrize("key", ["google_service_account", "GOOGLE_SERVICE_ACCOUNT_KEY", "service_account_key",
                                 "google_application_credentials"])
def test_delta_rs_gets_no_oauth_fallback_behind_a_gcs_base_url(tmp_path: Path, key: str) -> None:
    # delta-rs reads the same service account: without disable_oauth it would ask Google for tokens.
    account = json.dumps({"gcs_base_url": "http://127.0.0.1:9", "client_email": "", "private_key": ""})
    if "key" not in key.lower():
        (tmp_path / "sa.json").write_text(account)
        account = str(tmp_path / "sa.json")
    with pytest.raises(StorageConfigError, match="without disable_oauth would fetch OAuth tokens from Google"):
        delta_options("gs://lake/t", {key: account})


def test_an_unreadable_service_account_file_is_one_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(StorageConfigError, match=rf"cannot read the Google service account file {missing} "
                                                 r"\(option service_account\): No such file"):
        delta_options("gs://lake/t", {"google_service_account": str(missing)})
    with pytest.raises(StorageConfigError, match="cannot read the Google service account file"):
        pyarrow_filesystem("gs://lake/t", {"google_service_account": str(missing)})


@pytest.mark.parametrize(("uri", "options", "match"), [
    ("az://lake/t", {"account_name": "a", "client_id": "i", "client_secret": "s"}, r"missing \['tenant_id'\]"),
    ("az://lake/t", {"account_name": "a", "tenant_id": "t"}, r"missing \['client_id', 'client_secret'\]"),
    ("s3://b/t", {"aws_session_token": "x"}, r"\['session_token'\] given without both"),
    ("s3://b/t", {"aws_access_key_id": "k"}, r"\['access_key_id'\] given without both"),
    ("s3://b/t", {"aws_role_session_name": "n"}, "AWS_ROLE_SESSION_NAME needs AWS_ROLE_ARN"),
])
def test_partial_credentials_are_refused_not_dropped(uri: str, options: dict[str, str], match: str) -> None:
    with pytest.raises(StorageConfigError, match=match):
        pyarrow_filesystem(uri, options)


def test_one_line_removes_every_escape_sequence_not_only_colours() -> None:
    from idxlake.schemas.storage import one_line

    text = "\x1b[31mred\x1b[0m \x1b[2Kcleared \x1b]8;;http://x\x07link\x1b]8;;\x07 \x1bMup\n  ↳ next"
    assert one_line(Exception(text)) == "red cleared link up next"


def test_a_service_account_key_never_appears_in_the_error() -> None:
    """A key given as text that is no JSON object (a PEM, a BOM before the JSON) is read as a path: the error
    names the option, not the value."""
    pem = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7\n-----END PRIVATE KEY-----"
    for value in (pem, "\ufeff" + json.dumps({"private_key": pem, "client_email": "x@y"})):
        for call in (delta_options, pyarrow_filesystem):
            with pytest.raises(StorageConfigError) as info_:
                call("gs://lake/t", {"google_service_account_key": value})
            assert "MIIEvQ" not in str(info_.value) and "PRIVATE" not in str(info_.value)
            assert "service_account_key" in str(info_.value) or "not JSON" in str(info_.value)


def test_snapshots_and_pending_writes_never_print_their_storage_options(s3_endpoint: dict[str, str],
                                                                        synthetic_source: SyntheticSource) -> None:
    from idxlake import ingest
    from idxlake.pipeline.ingest.delta_commit import open_pending
    from idxlake.schemas import snapshot

    options = {**s3_endpoint, "AWS_SESSION_TOKEN": "SESSION-SECRET-0123"}
    ingest(synthetic_source.root, "s3://lake/repr_t", storage_options=options)
    snap = snapshot("s3://lake/repr_t", storage_options=options)
    pending = open_pending("s3://lake/repr_t", options)
    for text in (repr(snap), str(snap), repr(pending)):
        assert "SESSION-SECRET" not in text and s3_endpoint["AWS_SECRET_ACCESS_KEY"] not in text.split("uri=")[0]
    assert snap.storage_options == options  # still there for the readers


def test_redact_hides_signatures_in_urls() -> None:
    from idxlake.cli.messages import one_line as cli_line
    from idxlake.schemas.storage import one_line, redact

    url = ("GetProperties failed for 'http://127.0.0.1:1/devstoreaccount1/lake/t?sv=2021-08-06&ss=b&se=2030-01-01"
           "&sig=FRJGODtjQViafZP%2BRLHAY%3D'. 403 X-Amz-Signature=abcdef0123&X-Amz-Credential=AKIA/x account_key=k1")
    for text in (redact(url), one_line(OSError(url)), cli_line(url)):
        assert "FRJGOD" not in text and "abcdef0123" not in text and "AKIA" not in text and "k1" not in text
        assert "sig=REDACTED" in text and "se=2030-01-01" in text  # the expiry stays: it helps


@pytest.mark.parametrize("prefix", ["", "?"])
def test_an_azure_sas_token_reaches_both_clients(azurite: stores.Server, synthetic_source: SyntheticSource,
                                                 prefix: str) -> None:
    """pyarrow appends the token to the URL as given: without its ``?`` the signature became a path segment
    (every read failed, and the error printed the signature)."""
    from idxlake import ingest
    from idxlake.loaders import DeltaIterableDataset

    options = {"account_name": "devstoreaccount1", "sas_token": prefix + stores.account_sas(),
               "endpoint": azurite.options["endpoint"], "allow_http": "true"}
    uri = f"abfss://lake@devstoreaccount1.dfs.core.windows.net/sas{len(prefix)}"
    ingest(synthetic_source.root, uri, storage_options=options)
    ds = DeltaIterableDataset(uri, split="train", storage_options=options, batch_size=100)
    assert sorted(i for b in ds for i in b["id"].tolist()) == list(range(300))
    forged = stores.account_sas(key="AAAA" + stores.AZURITE_KEY[4:])  # signed with another key: 403
    sig = forged.rsplit("sig=", 1)[1]
    bad = {**options, "sas_token": forged}
    with pytest.raises(StorageAccessError, match=r"the storage refused the request .*check the credentials") as caught:
        DeltaIterableDataset(uri, split="train", storage_options=bad, batch_size=100)  # the log, through delta-rs
    snap = snapshot(uri, storage_options=options)
    object.__setattr__(snap, "storage_options", bad)  # the data files, through pyarrow (its URLs hold the SAS)
    with pytest.raises(StorageAccessError, match=r"403") as listed:
        snap.check_files(snap.files)
    for err in (caught.value, listed.value):
        assert sig not in str(err) and sig[:12] not in str(err)
    assert main(["info", uri, *[a for k, v in bad.items() for a in ("--storage-option", f"{k}={v}")]]) == 2


@pytest.mark.parametrize(("text", "kind"), [
    ("Generic S3 error: Error performing GET http://h/b/t in 1ms - Server returned non-2xx status code 403 Forbidden",
     StorageAccessError),
    ("InvalidAccessKeyId: The AWS Access Key Id you provided does not exist", StorageAccessError),
    ("error sending request for url (http://127.0.0.1:9/b/t/_delta_log/_last_checkpoint)", StorageUnreachableError),
    ("tcp connect error: Connection refused (os error 111)", StorageUnreachableError),
    ("Kernel error: File not found: /data/connect 100/t/_delta_log/00000000000000000000.json", None),
    ("Error performing GET http://h/b/t - Server returned non-2xx status code 404 Not Found", None),
])
def test_storage_errors_are_told_apart(text: str, kind: type | None) -> None:
    from idxlake.schemas import storage_error

    uri = "/data/connect 100/t" if "connect 100" in text else "s3://b/t"
    err = storage_error(uri, OSError(text))
    assert (type(err) if err is not None else None) is kind


@pytest.mark.parametrize("uri", ["s3://b/t", "az://lake/t", "gs://lake/t"])
def test_a_bad_timeout_is_refused_on_every_store(uri: str) -> None:
    """It was refused for s3:// only, and accepted (then dropped) for az:// and gs://."""
    options = {"timeout": "not-a-duration"}
    if uri.startswith("az"):
        options.update(account_name="a", account_key="a2V5")
    if uri.startswith("s3"):
        options.update(aws_access_key_id="k", aws_secret_access_key="s", aws_region="us-east-1")
    with pytest.raises(StorageConfigError, match=r"storage option timeout='not-a-duration': expected a duration"):
        pyarrow_filesystem(uri, options)


@pytest.mark.parametrize(("endpoint", "expected"), [
    ("http://127.0.0.1:10000/acct", ("127.0.0.1:10000", "127.0.0.1:10000", "http")),  # Azurite, path style
    ("https://acct.blob.core.chinacloudapi.cn", (".blob.core.chinacloudapi.cn", ".dfs.core.chinacloudapi.cn", "https")),
    ("https://acct.dfs.core.usgovcloudapi.net/", (".blob.core.usgovcloudapi.net", ".dfs.core.usgovcloudapi.net",
                                                  "https")),
])
def test_azure_endpoints_map_to_the_urls_delta_rs_builds(endpoint: str, expected: tuple[str, str, str]) -> None:
    from idxlake.schemas.storage_fs import azure_authorities

    assert azure_authorities(endpoint, "acct", path_style=False, allow_http=False, where="az://c/t") == expected


def test_an_azure_endpoint_the_two_clients_read_differently_is_refused() -> None:
    """``http://127.0.0.1:PORT`` (no account in the path): delta-rs asked for ``/lake/...``, pyarrow for
    ``/acct/lake/...``: the log and the data files came from different objects."""
    options = {"account_name": "acct", "account_key": "a2V5", "endpoint": "http://127.0.0.1:9", "allow_http": "true"}
    with pytest.raises(StorageConfigError, match=r"neither http\(s\)://HOST\[:PORT\]/acct \(path style\) nor "
                                                 r"https://acct.blob.SUFFIX"):
        pyarrow_filesystem("az://lake/t", options)
    with pytest.raises(StorageConfigError, match="delta-rs and pyarrow would build different URLs"):
        pyarrow_filesystem("abfss://lake@acct.dfs.core.windows.net/t",
                           {**options, "endpoint": "https://proxy.example.internal"})
    pyarrow_filesystem("abfss://lake@acct.dfs.core.chinacloudapi.cn/t", {"account_key": "a2V5"})  # another cloud
