"""``idxlake download``: only against a loopback HTTP server serving the bundled MNIST files.

The bundled files (the same bytes as ``../shared/data/mnist``) are re-compressed: their .gz md5s
differ from the registry's, their uncompressed payloads match its sha256s.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import stores

from idxlake.cli import main
from idxlake.pipeline.ingest.download import download
from idxlake.pipeline.ingest.sources import bundled_mnist
from idxlake.schemas import DATASETS, ChecksumMismatchError, DownloadError, SourceError

NAMES = [n for f in DATASETS["mnist"].splits.values() for n in (f.images, f.labels)]


class Mirror(http.server.ThreadingHTTPServer):
    """Serves a directory with Range support; can cut a file's first response or corrupt a file."""

    def __init__(self, root: Path) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.root = root
        self.cut: dict[str, int] = {}
        self.corrupt: set[str] = set()
        self.log: list[tuple[str, str | None]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/mnist/"


class Handler(http.server.BaseHTTPRequestHandler):
    server: Mirror

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        name = self.path.rsplit("/", 1)[-1]
        self.server.log.append((name, self.headers.get("Range")))
        path = self.server.root / name
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        if name in self.server.corrupt:
            data = data[:100] + bytes(len(data) - 100)
        start = int(self.headers["Range"].split("=")[1].split("-")[0]) if self.headers.get("Range") else 0
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        cut = self.server.cut.pop(name, None)
        self.wfile.write(data[start:cut])
        if cut is not None:
            self.close_connection = True


@pytest.fixture
def mirror() -> Iterator[Mirror]:
    server = Mirror(bundled_mnist())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _payload_sha256(path: Path) -> str:
    import gzip

    return hashlib.sha256(gzip.decompress(path.read_bytes())).hexdigest()


def test_mirror_order_verification_and_json(mirror: Mirror, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dead = f"http://127.0.0.1:{stores.free_port()}/mnist/"
    out = tmp_path / "mnist"
    assert main(["download", "mnist", str(out), "--mirror", dead, "--mirror", mirror.url, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [f["name"] for f in doc["files"]] == NAMES
    assert {f["verified"] for f in doc["files"]} == {"sha256"}  # re-compressed: md5 differs, payload matches
    assert {f["source"] for f in doc["files"]} == {mirror.url + n for n in NAMES}
    for spec in DATASETS["mnist"].splits.values():
        assert _payload_sha256(out / spec.images) == spec.images_sha256
    assert sorted(p.name for p in out.iterdir()) == sorted(NAMES)  # no .part left
    mirror.log.clear()
    again = download("mnist", out, mirrors=[mirror.url])
    assert {f.source for f in again} == {"kept"} and mirror.log == []


def test_resume_after_a_cut_connection(mirror: Mirror, tmp_path: Path) -> None:
    mirror.cut["train-images-idx3-ubyte.gz"] = 3_000_000
    got = []
    files = download("mnist", tmp_path, mirrors=[mirror.url], progress=got.append)
    assert ("train-images-idx3-ubyte.gz", "bytes=3000000-") in mirror.log
    assert sum(got) == sum(f.bytes for f in files)
    image = next(f for f in files if f.name == "train-images-idx3-ubyte.gz")
    assert image.path.read_bytes() == (bundled_mnist() / image.name).read_bytes()


def test_hash_mismatch_keeps_nothing(mirror: Mirror, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mirror.corrupt.add("train-labels-idx1-ubyte.gz")
    want = DATASETS["mnist"].splits["train"]
    with pytest.raises(ChecksumMismatchError, match=rf"train-labels-idx1-ubyte.gz: .*expected md5 {want.labels_md5} "
                                                    rf"or payload sha256 {want.labels_sha256}.*got md5 [0-9a-f]{{32}}"):
        download("mnist", tmp_path, mirrors=[mirror.url])
    assert not (tmp_path / "train-labels-idx1-ubyte.gz").exists()
    assert not list(tmp_path.glob(".*.part"))
    assert main(["download", "mnist", str(tmp_path), "--mirror", mirror.url]) == 1
    err = capsys.readouterr().err
    assert err.startswith("idxlake download: error: train-labels-idx1-ubyte.gz") and "Nothing was kept" in err


def test_every_mirror_fails_and_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dead = [f"http://127.0.0.1:{stores.free_port()}/a/", f"http://127.0.0.1:{stores.free_port()}/b/"]
    with pytest.raises(DownloadError, match=r"every mirror failed: http://127\.0\.0\.1:\d+/a/train-images.*Connection "
                                            r"refused.*/b/train-images.*--mirror URL"):
        download("mnist", tmp_path, mirrors=dead)
    assert list(tmp_path.iterdir()) == []
    assert main(["download", "nope", str(tmp_path)]) == 2
    assert "unknown dataset 'nope'" in capsys.readouterr().err
    with pytest.raises(SourceError, match="no per-file mirror is known"):
        download("emnist-digits", tmp_path)
    with pytest.raises(SourceError, match="only http:// and https://"):
        download("mnist", tmp_path, mirrors=["ftp://example.invalid/"])


def test_a_stale_part_of_other_bytes_is_downloaded_again_not_a_mismatch(mirror: Mirror, tmp_path: Path) -> None:
    # An earlier run (another mirror, another file) left a .part: resuming it cannot verify; start over.
    (tmp_path / ".train-labels-idx1-ubyte.gz.part").write_bytes(b"\x1f\x8b" + bytes(5000))
    files = download("mnist", tmp_path, mirrors=[mirror.url])
    labels = next(f for f in files if f.name == "train-labels-idx1-ubyte.gz")
    assert labels.path.read_bytes() == (bundled_mnist() / labels.name).read_bytes()
    assert [r for n, r in mirror.log if n == labels.name] == ["bytes=5002-", None]
    assert not list(tmp_path.glob(".*.part"))
