"""One end-to-end body over every store, each on a real protocol server on 127.0.0.1.

ingest -> info -> SQL (DataFusion and DuckDB) -> loader with 0 and 2 workers -> export, on a
local path, ``s3://`` (moto), ``az://`` and ``abfss://`` (Azurite) and ``gs://`` (fake-gcs-server).

GCS is read-side: delta-rs' commits to fake-gcs-server fail (PUT 400 "invalid uploadType"), so the
gs table is ingested locally and its files copied into the bucket with pyarrow's GcsFileSystem.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import pytest
import torch
from conftest import SyntheticSource
from torch.utils.data import DataLoader

from idxlake import export, info, ingest, query, read_idx
from idxlake.loaders import DeltaIterableDataset
from idxlake.schemas import pyarrow_filesystem, worker_context


@dataclass
class Location:
    """Where one parametrised run puts its table."""

    uri: str
    options: dict[str, str] | None
    ingest: Callable[..., object]


def _location(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Location:
    name = f"t-{uuid.uuid4().hex[:8]}"
    if kind == "local":
        return Location(str(tmp_path / name), None, ingest)
    if kind == "s3":
        return Location(f"s3://lake/{name}", request.getfixturevalue("s3_endpoint"), ingest)
    if kind == "az":
        request.getfixturevalue("azurite")  # AZURITE_BLOB_STORAGE_URL: what use_emulator reaches
        return Location(f"az://lake/{name}", {"use_emulator": "true"}, ingest)
    if kind == "abfss":
        server = request.getfixturevalue("azurite")
        return Location(f"abfss://lake@devstoreaccount1.dfs.core.windows.net/{name}", server.options, ingest)
    server = request.getfixturevalue("fake_gcs")
    uri = f"gs://lake/{name}"

    def ingest_then_copy(source: Path, table: str, *, storage_options: dict[str, str], **kw: object) -> object:
        staged = tmp_path / "staged"
        result = ingest(source, str(staged), **kw)  # type: ignore[arg-type]
        fs, path = pyarrow_filesystem(table, storage_options)
        pafs.copy_files(str(staged), path, destination_filesystem=fs)
        return result

    return Location(uri, server.options, ingest_then_copy)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["local", "s3", "az", "abfss", "gs"])
def test_every_store_end_to_end(kind: str, request: pytest.FixtureRequest, tmp_path: Path,
                                synthetic_source: SyntheticSource) -> None:
    loc = _location(kind, request, tmp_path)
    src = synthetic_source
    loc.ingest(src.root, loc.uri, storage_options=loc.options, row_group_rows=64)

    doc = info(loc.uri, storage_options=loc.options)
    assert {k: v["rows"] for k, v in doc["splits"].items()} == {"train": 300, "test": 100}

    for engine in ("datafusion", "duckdb"):
        result = query(loc.uri, "SELECT split, count(*) AS n, sum(label) AS s FROM mnist GROUP BY split ORDER BY split",
                       engine=engine, name="mnist", storage_options=loc.options)
        rows = result.table.to_pylist()
        assert [(r["split"], r["n"], r["s"]) for r in rows] == [
            ("test", 100, int(src.arrays["test"][1].sum())), ("train", 300, int(src.arrays["train"][1].sum()))]

    images, labels = src.arrays["train"]
    orders = []
    for workers in (0, 2):
        ds = DeltaIterableDataset(loc.uri, split="train", storage_options=loc.options, batch_size=50, seed=3)
        context = worker_context(loc.uri) if workers else None
        loader = DataLoader(ds, batch_size=None, num_workers=workers, multiprocessing_context=context)
        ids: list[int] = []
        for batch in loader:
            batch_ids = batch["id"].numpy()
            assert torch.equal(batch["image"].reshape(len(batch_ids), 28, 28), torch.from_numpy(images[batch_ids]))
            assert np.array_equal(batch["label"].numpy(), labels[batch_ids])
            ids += batch_ids.tolist()
        assert sorted(ids) == list(range(300))
        orders.append(ids)
    assert orders[0] == orders[1], "the order does not depend on the number of workers"

    out = tmp_path / "exported"
    export(loc.uri, out, storage_options=loc.options)
    for split, (want_images, want_labels) in src.arrays.items():
        stem = "train" if split == "train" else "t10k"
        assert np.array_equal(read_idx(out / f"{stem}-images-idx3-ubyte.gz"), want_images)
        assert np.array_equal(read_idx(out / f"{stem}-labels-idx1-ubyte.gz"), want_labels)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["local", "s3", "az", "gs"])
def test_raw_page_reads_on_every_store(kind: str, request: pytest.FixtureRequest, tmp_path: Path,
                                       synthetic_source: SyntheticSource) -> None:
    """An UNCOMPRESSED table read cold from each store: its image pages read raw, later epochs straight
    into the arena's region (``loaders/pages.py``, ``loaders/arena.py``), a local file mapped into it
    (``loaders/mapped.py``), the same rows as written."""
    loc = _location(kind, request, tmp_path)
    src = synthetic_source
    loc.ingest(src.root, loc.uri, storage_options=loc.options, row_group_rows=64, codec="UNCOMPRESSED")
    images, labels = src.arrays["train"]
    ds = DeltaIterableDataset(loc.uri, split="train", storage_options=loc.options, batch_size=50, cache_bytes=0)
    for epoch in range(3):
        ds.set_epoch(epoch)
        ids: list[int] = []
        for batch in ds:
            batch_ids = batch["id"].numpy()
            assert torch.equal(batch["image"].reshape(len(batch_ids), 28, 28), torch.from_numpy(images[batch_ids]))
            assert np.array_equal(batch["label"].numpy(), labels[batch_ids])
            ids += batch_ids.tolist()
        assert sorted(ids) == list(range(300))
    arena = ds._slots
    assert arena is not None and arena.region is not None
    if kind == "local":  # the file is mapped into the arena (loaders/mapped.py): nothing is copied
        assert arena.decoded == 3 * 5 and arena.copied == 0 and arena.region.space is not None
        assert list(arena.region.space.mapped) == [0]
    else:  # read into the region's slots: the first epoch's 5 row groups copied, none later
        assert arena.decoded == 3 * 5 and arena.copied == 5 and arena.region.space is None
