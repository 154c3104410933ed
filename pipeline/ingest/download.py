"""Verified download of a registered dataset's canonical files from its mirrors.

For each file of :data:`idxlake.schemas.DATASETS` ``[name]``, mirrors are tried in order. Bytes
land in ``DIR/.NAME.part`` (resumed with an HTTP ``Range`` request after a cut connection) and
are kept under their final name only once verified against the registry, then renamed
atomically:

* the md5 of the ``.gz`` bytes, where the registry has it (torchvision's resource lists);
* else, or when a mirror serves re-compressed files, the sha256 of the uncompressed payload,
  where known.

A file that matches neither is deleted and the next mirror tried; a file already in ``DIR``
is verified the same way and kept when it matches.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import logging
import os
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from idxlake.schemas import ChecksumMismatchError, DownloadError, SourceError, get_dataset

logger = logging.getLogger(__name__)

MIRRORS: dict[str, tuple[str, ...]] = {
    "mnist": ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
    "fashion-mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    "kmnist": ("http://codh.rois.ac.jp/kmnist/dataset/kmnist/",),
}
"""Dataset name -> its published per-file mirrors, in order (as torchvision lists them)."""

CHUNK = 1 << 20
TIMEOUT_S = 30.0
ATTEMPTS_PER_MIRROR = 3
"""Connections per mirror and file: a cut connection is resumed with a Range request."""

Verified = Literal["md5", "sha256"]


@dataclass(frozen=True)
class DownloadedFile:
    """One verified file.

    Attributes:
        name: File name in the target directory.
        path: Its final path.
        bytes: Size on disk.
        verified: ``md5`` (canonical .gz bytes) or ``sha256`` (uncompressed payload).
        source: The URL it came from, or ``"kept"`` for a verified file already present.
    """

    name: str
    path: Path
    bytes: int
    verified: Verified
    source: str


def _verify(path: Path, md5: str | None, sha256: str | None) -> tuple[Verified | None, str]:
    """``(how it matched or None, what was found)``, reading in chunks."""
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            h.update(chunk)
    got = f"md5 {h.hexdigest()}"
    if md5 is not None and h.hexdigest() == md5:
        return "md5", got
    if sha256 is not None:
        p = hashlib.sha256()
        try:
            with gzip.open(path, "rb") as fh:
                for chunk in iter(lambda: fh.read(CHUNK), b""):
                    p.update(chunk)
        except (OSError, EOFError, zlib.error) as exc:
            return None, f"{got}, not a readable gzip file ({exc})"
        got += f", payload sha256 {p.hexdigest()}"
        if p.hexdigest() == sha256:
            return "sha256", got
    return None, got


def _fetch(url: str, part: Path, progress: Callable[[int], None] | None) -> None:
    """Download ``url`` into ``part``, resuming from its current size; raises OSError on failure."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # nothing left to send: the part is complete
            return
        raise
    with response:
        resumed = have and response.status == 206
        if have and not resumed:
            logger.info("%s: the server ignored the Range request; restarting", url)
        length = response.headers.get("Content-Length")
        received = 0
        with open(part, "ab" if resumed else "wb") as out:
            for chunk in iter(lambda: response.read(CHUNK), b""):
                out.write(chunk)
                received += len(chunk)
                if progress:
                    progress(len(chunk))
        if length is not None and received < int(length):  # http.client returns short reads silently
            raise ConnectionError(f"connection cut after {received} of {length} bytes")


def download(dataset: str, directory: str | Path, *, mirrors: Sequence[str] | None = None,
             progress: Callable[[int], None] | None = None,
             on_file: Callable[[str], None] | None = None) -> list[DownloadedFile]:
    """Download and verify the canonical files of ``dataset`` into ``directory``.

    Args:
        dataset: Registered dataset name (see ``idxlake.schemas.DATASETS``).
        directory: Target directory (created).
        mirrors: Base URLs to try in order instead of the published ones.
        progress: Called with the number of bytes just received.
        on_file: Called with each file name before it is fetched.

    Returns:
        One :class:`DownloadedFile` per file, in registry order.

    Raises:
        SourceError: unknown dataset, no known mirror, no published hash, or a mirror that is not http(s).
        ChecksumMismatchError: every mirror served a file that does not match the registry.
        DownloadError: every mirror failed (no network, HTTP errors, cut connections).
    """
    try:
        spec = get_dataset(dataset)
    except KeyError as exc:
        raise SourceError(str(exc.args[0])) from None
    bases = list(mirrors) if mirrors else list(MIRRORS.get(spec.name, ()))
    if not bases:
        raise SourceError(f"{dataset}: no per-file mirror is known; pass --mirror URL (a directory serving "
                          f"{', '.join(f.images for f in spec.splits.values())} ...)")
    bad = [b for b in bases if not b.lower().startswith(("http://", "https://"))]
    if bad:
        raise SourceError(f"mirror(s) {bad}: only http:// and https:// URLs are supported")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    done = []
    for files in spec.splits.values():
        for name, md5, sha256 in ((files.images, files.images_md5, files.images_sha256),
                                  (files.labels, files.labels_md5, files.labels_sha256)):
            if md5 is None and sha256 is None:
                raise SourceError(f"{dataset}: {name} has no published hash, so a download cannot be verified")
            if on_file:
                on_file(name)
            done.append(_one(out, name, md5, sha256, bases, progress))
    return done


def _one(out: Path, name: str, md5: str | None, sha256: str | None, bases: Sequence[str],
         progress: Callable[[int], None] | None) -> DownloadedFile:
    final, part = out / name, out / f".{name}.part"
    expected = " or ".join(x for x in (md5 and f"md5 {md5}", sha256 and f"payload sha256 {sha256}") if x)
    if final.exists():
        how, _ = _verify(final, md5, sha256)
        if how:
            return DownloadedFile(name, final, final.stat().st_size, how, "kept")
        logger.warning("%s: present but does not match the registry; downloading it again", final)
    failures, mismatches = [], []
    for base in bases:
        url = base.rstrip("/") + "/" + name
        how, got = None, ""
        for fresh in (False, True):
            stale = part.exists()  # left by an earlier run, perhaps from another mirror or another file
            for attempt in range(1, ATTEMPTS_PER_MIRROR + 1):
                try:
                    _fetch(url, part, progress)
                    break
                except (OSError, ValueError, http.client.HTTPException) as exc:  # URLError, timeouts, cuts
                    reason = f"{url}: {getattr(exc, 'reason', None) or exc}"
                    logger.info("attempt %d: %s", attempt, reason)
                    if isinstance(exc, urllib.error.HTTPError) or attempt == ATTEMPTS_PER_MIRROR:
                        failures.append(reason)
                        part.unlink(missing_ok=True)
                        break
            if not part.exists():
                break
            how, got = _verify(part, md5, sha256)
            if how is None:
                part.unlink()
            if how is not None or fresh or not stale:
                break
            logger.info("%s: the resumed part did not verify; downloading it again from the start", url)
        if how is None:
            if got:
                mismatches.append(f"{url}: got {got}")
            continue
        size = part.stat().st_size
        os.replace(part, final)  # atomic: only a verified file ever has the final name
        logger.info("%s: verified by %s from %s", name, how, url)
        return DownloadedFile(name, final, size, how, url)
    if mismatches:
        raise ChecksumMismatchError(f"{name}: no mirror served the registered file (expected {expected}); "
                                    + "; ".join(mismatches + failures) + ". Nothing was kept.")
    raise DownloadError(f"{name}: every mirror failed: " + "; ".join(failures)
                        + ". Check the network, or pass --mirror URL.")
