"""Ingest: real MNIST byte for byte, idempotency, modes, atomic failure, dtypes, EMNIST orientation."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import MNIST_TEST_COUNTS, MNIST_TRAIN_COUNTS, make_source
from deltalake import DeltaTable

import idxlake.pipeline.ingest.delta_commit
from idxlake import ingest
from idxlake.pipeline.export import export
from idxlake.pipeline.idx.write import idx_header
from idxlake.schemas import (
    IdxFormatError,
    SchemaMismatchError,
    SourceError,
    TableExistsError,
    get_dataset,
    snapshot,
)

MNIST = get_dataset("mnist")


def _split_table(table: str, split: str) -> pa.Table:
    return snapshot(table).dataset([split]).to_table().sort_by("id")


def _files(table: str) -> set[str]:
    return {str(p.relative_to(table)) for p in Path(table).rglob("*.parquet")}


@pytest.mark.parametrize(("split", "counts"), [("train", MNIST_TRAIN_COUNTS), ("test", MNIST_TEST_COUNTS)])
def test_real_mnist_byte_for_byte(mnist_table: str, split: str, counts: list[int]) -> None:
    t = _split_table(mnist_table, split)
    files = MNIST.splits[split]
    assert t.num_rows == files.rows
    assert t["id"].to_pylist() == list(range(files.rows))
    assert np.bincount(t["label"].to_numpy()).tolist() == counts
    images = hashlib.sha256(idx_header("uint8", (files.rows, 28, 28)))
    for chunk in t["image"].chunks:
        images.update(chunk.buffers()[2].to_pybytes()[chunk.offset * 784:(chunk.offset + len(chunk)) * 784])
    assert images.hexdigest() == files.images_sha256
    labels = idx_header("uint8", (files.rows,)) + t["label"].to_numpy().astype(np.uint8).tobytes()
    assert hashlib.sha256(labels).hexdigest() == files.labels_sha256


def test_real_mnist_metadata(mnist_table: str) -> None:
    snap = snapshot(mnist_table)
    meta = snap.meta
    assert (meta.dataset, meta.shape, meta.dtype, meta.label_dtype) == ("mnist", (28, 28), "uint8", "uint8")
    assert meta.class_names == tuple("0123456789")
    assert meta.splits["train"].stats.mean == pytest.approx(0.1306605, abs=1e-6)
    assert meta.splits["train"].stats.std == pytest.approx(0.3081078, abs=1e-6)
    assert meta.splits["test"].stats.mean == pytest.approx(0.132515, abs=1e-6)
    assert meta.splits["test"].stats.std == pytest.approx(0.310480, abs=1e-6)
    assert all(s.verified for s in meta.splits.values())
    assert {f.name: f.sha256 for f in meta.splits["train"].sources} == {
        MNIST.splits["train"].images: MNIST.splits["train"].images_sha256,
        MNIST.splits["train"].labels: MNIST.splits["train"].labels_sha256}
    assert snap.name == "mnist" and "28x28 uint8" in (snap.description or "")
    # Row groups sized for streaming; no statistics on the image column; stats on id.
    f = next(f for f in snap.files if f.split == "train")
    md = pq.ParquetFile(f.uri).metadata
    assert [md.row_group(i).num_rows for i in range(md.num_row_groups)] == [8192] * 7 + [60000 - 7 * 8192]
    names = [md.row_group(0).column(i).path_in_schema for i in range(md.num_columns)]
    assert not md.row_group(0).column(names.index("image")).is_stats_set
    assert md.row_group(0).column(names.index("id")).statistics.max == 8191
    # The metadata JSON lives in the Delta schema only: footers would go stale.
    assert set(pq.read_schema(f.uri).field("image").metadata) == {b"comment"}
    # Lineage in the commit.
    history = DeltaTable(mnist_table).history(1)[0]
    lineage = json.loads(history["userMetadata"])
    assert lineage["rows"] == {"test": 10000, "train": 60000} and lineage["verified"] is True
    assert lineage["sources"]["test"][0]["sha256"] == MNIST.splits["test"].images_sha256
    assert DeltaTable(mnist_table).protocol().min_reader_version == 1


def test_export_round_trip_is_byte_identical(mnist_table: str, tmp_path: Path) -> None:
    out = export(mnist_table, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        n for s in MNIST.splits.values() for n in (s.images, s.labels))
    for done in out:
        files = MNIST.splits[done.split]
        assert hashlib.sha256(gzip.decompress(done.images.read_bytes())).hexdigest() == files.images_sha256
        assert hashlib.sha256(gzip.decompress(done.labels.read_bytes())).hexdigest() == files.labels_sha256


def test_idempotent_rerun_is_a_noop(synthetic_table: tuple[str, object]) -> None:
    table, source = synthetic_table
    before = _files(table)
    again = ingest(source.root, table)
    assert again.noop and again.version == 0
    assert DeltaTable(table).version() == 0 and _files(table) == before


def test_replace_changes_only_the_ingested_split(tmp_path: Path, synthetic_table: tuple[str, object]) -> None:
    table, _ = synthetic_table
    train_files = {f for f in _files(table) if f.startswith("split=train")}
    new = make_source(tmp_path / "new", rows={"test": 50}, seed=7)
    result = ingest(new.root, table)
    assert not result.noop and result.version == 1 and result.rows == {"test": 50}
    assert {f for f in _files(table) if f.startswith("split=train")} == train_files
    snap = snapshot(table)
    assert {k: v.rows for k, v in snap.meta.splits.items()} == {"test": 50, "train": 300}
    test = _split_table(table, "test")
    assert test["image"][0].as_py() == new.arrays["test"][0][0].tobytes()
    assert _split_table(table, "train").num_rows == 300
    # The same replace again is a no-op.
    assert ingest(new.root, table).noop


def test_append_continues_ids_and_combines_stats(tmp_path: Path, synthetic_table: tuple[str, object]) -> None:
    table, source = synthetic_table
    before = snapshot(table).meta.splits["train"]
    result = ingest(source.root, table, mode="append", allow_duplicate=True)
    assert result.version == 1
    train = _split_table(table, "train")
    assert train["id"].to_pylist() == list(range(600))
    assert train["image"][300].as_py() == train["image"][0].as_py()
    meta = snapshot(table).meta.splits["train"]
    assert meta.rows == 600 and not meta.verified and len(meta.sources) == 4
    assert meta.stats.mean == pytest.approx(before.stats.mean)
    assert meta.stats.count == 2 * before.stats.count


def test_overwrite_replaces_whole_table(tmp_path: Path, synthetic_table: tuple[str, object]) -> None:
    table, _ = synthetic_table
    other = make_source(tmp_path / "o", rows={"train": 20}, shape=(4, 4), dtype="float32")
    ingest(other.root, table, mode="overwrite")
    snap = snapshot(table)
    assert set(snap.meta.splits) == {"train"} and snap.meta.shape == (4, 4) and snap.meta.dtype == "float32"
    assert _split_table(table, "train").num_rows == 20


def test_mode_error_refuses_existing_table(synthetic_table: tuple[str, object]) -> None:
    table, source = synthetic_table
    with pytest.raises(TableExistsError, match=r"table exists \(version 0\) and --mode error"):
        ingest(source.root, table, mode="error")


def test_incompatible_replace_is_refused(tmp_path: Path, synthetic_table: tuple[str, object]) -> None:
    table, _ = synthetic_table
    other = make_source(tmp_path / "o", rows={"test": 5}, shape=(8, 8))
    with pytest.raises(SchemaMismatchError, match=r"table holds shape \(28, 28\), the source has \(8, 8\)"):
        ingest(other.root, table)


@pytest.mark.parametrize("failure", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_failure_mid_ingest_leaves_previous_version(tmp_path: Path, synthetic_table: tuple[str, object],
                                                   monkeypatch: pytest.MonkeyPatch, failure: BaseException) -> None:
    table, _ = synthetic_table
    before_files = _files(table)
    before = _split_table(table, "test")
    new = make_source(tmp_path / "new", rows={"train": 500, "test": 200}, seed=3)
    real_write = idxlake.pipeline.ingest.delta_commit.pq.ParquetWriter.write_batch
    calls = {"n": 0}

    def flaky(self: pq.ParquetWriter, batch: pa.RecordBatch, **kw: object) -> None:
        calls["n"] += 1
        if calls["n"] == 3:  # after the first split's files exist
            raise failure
        real_write(self, batch, **kw)

    monkeypatch.setattr(idxlake.pipeline.ingest.delta_commit.pq.ParquetWriter, "write_batch", flaky)
    with pytest.raises(type(failure)):
        ingest(new.root, table, row_group_rows=100)
    assert DeltaTable(table).version() == 0
    assert _files(table) == before_files  # no orphan files left behind
    assert _split_table(table, "test").equals(before)
    monkeypatch.undo()
    assert ingest(new.root, table, row_group_rows=100).version == 1


def test_failed_first_ingest_leaves_no_table(tmp_path: Path, synthetic_source: object,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*a: object, **k: object) -> None:
        raise OSError("No space left on device")

    monkeypatch.setattr("deltalake.transaction.create_table_with_add_actions", boom)
    table = tmp_path / "t"
    with pytest.raises(Exception, match="No space left on device"):
        ingest(synthetic_source.root, str(table))
    assert not list(table.rglob("*.parquet"))
    monkeypatch.undo()
    assert ingest(synthetic_source.root, str(table)).version == 0


def test_bad_file_writes_nothing(tmp_path: Path, synthetic_source: object) -> None:
    path = synthetic_source.root / "t10k-images-idx3-ubyte.gz"
    data = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(data[:-10]))
    table = tmp_path / "t"
    with pytest.raises(IdxFormatError, match=r"t10k-images-idx3-ubyte.gz: payload is 78390 bytes, header "
                                             r"promises 78400 \(100x28x28 uint8\); file truncated\?"):
        ingest(synthetic_source.root, str(table))
    assert not table.exists()


def test_mismatched_counts(source_factory) -> None:
    src = source_factory(rows={"train": 10})
    other = source_factory("other", rows={"train": 12})
    (src.root / "train-labels-idx1-ubyte.gz").write_bytes((other.root / "train-labels-idx1-ubyte.gz").read_bytes())
    with pytest.raises(SourceError, match=r"train-images-idx3-ubyte.gz has 10 records but "
                                          r"train-labels-idx1-ubyte.gz has 12"):
        ingest(src.root, str(src.root.parent / "t"))


def test_labels_out_of_range_for_dataset(source_factory) -> None:
    src = source_factory(rows={"train": 30}, classes=12)
    with pytest.raises(SourceError, match=r"labels span 0..11, but MNIST has classes 0..9"):
        ingest(src.root, str(src.root.parent / "t"), dataset="mnist")


def test_unknown_dataset_name(synthetic_source: object, tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"unknown dataset 'mnsit'; known: .*mnist"):
        ingest(synthetic_source.root, str(tmp_path / "t"), dataset="mnsit")


def test_generic_data_is_not_verified(synthetic_table: tuple[str, object]) -> None:
    table, _ = synthetic_table
    meta = snapshot(table).meta
    assert meta.dataset == "generic" and not any(s.verified for s in meta.splits.values())


@pytest.mark.parametrize(("dtype", "label_dtype", "arrow_label"), [
    ("int16", "int32", pa.int32()), ("float32", "int8", pa.int8()), ("float64", "uint8", pa.int16()),
    ("int8", "int16", pa.int16()),
])
def test_every_dtype_round_trips_through_the_table(tmp_path: Path, dtype: str, label_dtype: str,
                                                   arrow_label: pa.DataType) -> None:
    src = make_source(tmp_path / "s", rows={"train": 40}, shape=(3, 5), dtype=dtype, label_dtype=label_dtype)
    table = str(tmp_path / "t")
    ingest(src.root, table, row_group_rows=16)
    t = _split_table(table, "train")
    assert t.schema.field("label").type == arrow_label
    images = np.frombuffer(b"".join(t["image"].to_pylist()), dtype=np.dtype(dtype).newbyteorder("<"))
    np.testing.assert_array_equal(images.reshape(40, 3, 5), src.arrays["train"][0])
    out = export(table, tmp_path / "out", compress=False)
    assert out[0].images.read_bytes() == (idx_header(dtype, (40, 3, 5))
                                          + src.arrays["train"][0].astype(np.dtype(dtype).newbyteorder(">")).tobytes())


def test_emnist_is_stored_upright_and_exported_as_published(tmp_path: Path) -> None:
    src = make_source(tmp_path / "s", rows={"train": 20, "test": 10}, prefix="emnist-digits-")
    table = str(tmp_path / "t")
    result = ingest(src.root, table)
    assert result.dataset == "emnist-digits" and not result.verified
    t = _split_table(table, "train")
    stored = np.frombuffer(t["image"][3].as_py(), dtype=np.uint8).reshape(28, 28)
    np.testing.assert_array_equal(stored, src.arrays["train"][0][3].T)
    out = {d.split: d for d in export(table, tmp_path / "out")}
    assert out["train"].images.name == "emnist-digits-train-images-idx3-ubyte.gz"
    assert gzip.decompress(out["train"].images.read_bytes()) == gzip.decompress(
        (src.root / "emnist-digits-train-images-idx3-ubyte.gz").read_bytes())
