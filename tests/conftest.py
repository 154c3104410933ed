"""Shared fixtures: synthetic IDX sources, small synthetic tables, and the real MNIST table."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import stores

from idxlake import ingest, write_idx
from idxlake.pipeline.ingest.sources import bundled_mnist

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@dataclass
class SyntheticSource:
    """A synthetic IDX source directory and the arrays it holds (``arrays[split] = (images, labels)``)."""

    root: Path
    arrays: dict[str, tuple[np.ndarray, np.ndarray]]


def make_source(root: Path, *, rows: dict[str, int] | None = None, shape: tuple[int, ...] = (28, 28),
                dtype: str = "uint8", label_dtype: str = "uint8", classes: int = 10, gz: bool = True,
                seed: int = 0, prefix: str = "") -> SyntheticSource:
    """Write MNIST-named synthetic IDX files into ``root``.

    Image ``i`` of each split starts with bytes that vary with ``i``; label ``i`` is ``i % classes``.
    """
    rows = rows or {"train": 300, "test": 100}
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, n in rows.items():
        stem = "train" if split == "train" else "t10k" if split == "test" else split
        if np.dtype(dtype).kind == "f":
            images = rng.standard_normal((n, *shape)).astype(dtype)
        else:
            info = np.iinfo(dtype)
            images = rng.integers(info.min, int(info.max) + 1, size=(n, *shape), dtype=dtype)
        labels = (np.arange(n) % classes).astype(label_dtype)
        suffix = ".gz" if gz else ""
        write_idx(root / f"{prefix}{stem}-images-idx{len(shape) + 1}-ubyte{suffix}", images)
        write_idx(root / f"{prefix}{stem}-labels-idx1-ubyte{suffix}", labels)
        arrays[split] = (images, labels)
    return SyntheticSource(root, arrays)


@pytest.fixture
def synthetic_source(tmp_path: Path) -> SyntheticSource:
    """300 train + 100 test random 28x28 uint8 records, labels ``i % 10``, gzipped."""
    return make_source(tmp_path / "src")


@pytest.fixture
def source_factory(tmp_path: Path) -> Callable[..., SyntheticSource]:
    """Factory: ``source_factory(name, **make_source_kwargs)`` writes into ``tmp_path/name``."""
    return lambda name="src", **kw: make_source(tmp_path / name, **kw)


@pytest.fixture
def synthetic_table(tmp_path: Path, synthetic_source: SyntheticSource) -> tuple[str, SyntheticSource]:
    """A small idxlake table (row groups of 64 rows) ingested from ``synthetic_source``."""
    table = str(tmp_path / "table")
    ingest(synthetic_source.root, table, row_group_rows=64)
    return table, synthetic_source


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The bundled real MNIST files."""
    return bundled_mnist()


@pytest.fixture(scope="session")
def mnist_table(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The real MNIST ingested once per session. Read-only: tests that write use their own table."""
    table = str(tmp_path_factory.mktemp("mnist") / "mnist")
    ingest(None, table)
    return table


@pytest.fixture(scope="session", autouse=True)
def _no_cloud_credential_chains() -> Iterator[None]:
    """Keep every cloud credential chain (instance metadata, profiles, Azure identity) off the network."""
    with pytest.MonkeyPatch.context() as mp:
        for name in stores.CLOUD_ENV_UNSET:
            mp.delenv(name, raising=False)
        for name, value in stores.CLOUD_ENV_OFF.items():
            mp.setenv(name, value)
        yield


RAMP = ((np.arange(28)[:, None] * 7 + np.arange(28)[None, :] * 3) % 255 + 1).astype(np.uint8)
"""Every image of the ``ramp_table`` fixture: no zero pixel, so the offset of a zero-padded crop is unique."""


@pytest.fixture
def ramp_table(tmp_path: Path) -> str:
    """A table for crop tests: 256 train + 64 test rows, all the same ramp image; labels ``i % 10``."""
    src = tmp_path / "ramp"
    src.mkdir()
    for stem, n in (("train", 256), ("t10k", 64)):
        write_idx(src / f"{stem}-images-idx3-ubyte.gz", np.broadcast_to(RAMP, (n, 28, 28)).copy())
        write_idx(src / f"{stem}-labels-idx1-ubyte.gz", (np.arange(n) % 10).astype(np.uint8))
    table = str(tmp_path / "ramp_table")
    ingest(src, table, row_group_rows=64)
    return table


@pytest.fixture(scope="session")
def s3_server() -> Iterator[stores.Server]:
    """A real S3 protocol server (moto, its own process) on 127.0.0.1 with bucket ``lake``."""
    server = stores.start_moto()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_endpoint(s3_server: stores.Server) -> dict[str, str]:
    """The delta-rs style storage options that reach :func:`s3_server`."""
    return dict(s3_server.options)


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[stores.Server]:
    """Azurite (Azure Blob emulator, npm) on 127.0.0.1 with container ``lake``; sets AZURITE_BLOB_STORAGE_URL."""
    server = stores.start_azurite(tmp_path_factory.mktemp("azurite"))
    with pytest.MonkeyPatch.context() as mp:
        for name, value in server.env.items():
            mp.setenv(name, value)
        yield server
    server.stop()


@pytest.fixture(scope="session")
def fake_gcs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[stores.Server]:
    """fake-gcs-server (GCS JSON API emulator) on 127.0.0.1 with bucket ``lake``."""
    server = stores.start_fake_gcs(tmp_path_factory.mktemp("gcs"))
    yield server
    server.stop()


@pytest.fixture
def decoded(monkeypatch, tmp_path) -> Path:
    """Every ``UnitReader.read`` appends ``pid file:row_group`` to a log (forked workers inherit the patch);
    :func:`reads` parses it."""
    from idxlake.loaders.decode import UnitReader

    log = tmp_path / "reads.log"
    real = UnitReader.read

    def counting(self, unit, *args, **kwargs):
        with open(log, "a") as fh:
            fh.write(f"{os.getpid()} {unit.file}:{unit.row_group}\n")
        return real(self, unit, *args, **kwargs)

    monkeypatch.setattr(UnitReader, "read", counting)
    return log


def reads(log: Path) -> list[tuple[str, str]]:
    """The ``(pid, file:row_group)`` pairs the :func:`decoded` log holds."""
    return [tuple(line.split()) for line in log.read_text().splitlines()] if log.exists() else []


CACHE_ROWS, CACHE_GROUP = 2400, 48  # 50 row groups


@pytest.fixture
def cache_table(tmp_path: Path, source_factory: Callable[..., SyntheticSource]) -> str:
    """The shared-cache tests' table: ``CACHE_ROWS`` train rows in row groups of ``CACHE_GROUP``."""
    src = source_factory("shared_cache", rows={"train": CACHE_ROWS, "test": 10}, seed=5)
    path = str(tmp_path / "shared_cache_table")
    ingest(src.root, path, row_group_rows=CACHE_GROUP)
    return path
