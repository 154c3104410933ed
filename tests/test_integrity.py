"""Silent corruption is caught: one flipped bit is detected by the loader, export, ``verify`` and the
DuckDB path (page CRCs), and a payload that differs from the lineage is caught by export and ``verify``."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from idxlake.cli import main
from idxlake.loaders import DeltaIterableDataset
from idxlake.pipeline.export import export
from idxlake.pipeline.inspect.verify import verify_table
from idxlake.schemas import DataCorruptionError, snapshot


def _train_file(table: str) -> tuple[Path, str]:
    f = next(f for f in snapshot(table).files if f.split == "train")
    return Path(table) / f.path, f.path


def _flip_a_bit_in_an_image_page(path: Path, row_group: int = 1) -> None:
    md = pq.ParquetFile(path).metadata
    group = md.row_group(row_group)
    image = next(group.column(i) for i in range(group.num_columns) if group.column(i).path_in_schema == "image")
    middle = image.data_page_offset + image.total_compressed_size // 2
    data = bytearray(path.read_bytes())
    data[middle] ^= 0x04
    path.write_bytes(bytes(data))


def _payload_changed_without_checksums(path: Path) -> None:
    """Rewrite a file with one pixel changed and no page checksums (a writer that does not store them)."""
    table = pq.read_table(path)
    images = table.column("image").to_pylist()
    images[5] = bytes([images[5][0] ^ 1]) + images[5][1:]
    table = table.set_column(table.schema.get_field_index("image"), table.schema.field("image"),
                             pa.array(images, pa.binary()))
    pq.write_table(table, path, row_group_size=64, write_page_checksum=False)


def test_one_flipped_bit_is_caught_by_loader_export_and_verify(
        synthetic_table, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    table, _ = synthetic_table
    path, rel = _train_file(table)
    _flip_a_bit_in_an_image_page(path)
    named = rf"{table}@v0: data file {rel} row group 1 cannot be read: .*CRC checksum verification failed"

    ds = DeltaIterableDataset(table, split="train", batch_size=64, shuffle=False)  # the cache's fill: pyarrow
    with pytest.raises(DataCorruptionError, match=named):
        for _ in ds:
            pass
    ds = DeltaIterableDataset(table, split="train", batch_size=64, shuffle=False, cache_bytes=0)
    with pytest.raises(DataCorruptionError, match=rf"{table}@v0: data file {rel} row group 1 cannot be read: page "
                                                  r"at byte \d+: CRC-32 0x[0-9a-f]{8} computed, 0x[0-9a-f]{8} stored"):
        for _ in ds:  # streaming: the loader reads the LZ4_RAW pages itself (loaders/lz4pages.py)
            pass

    out = tmp_path / "export"
    with pytest.raises(DataCorruptionError, match=named):
        export(table, out, splits=["train"])
    assert not list(out.iterdir())  # nothing kept, not even a partial file
    assert main(["export", table, str(tmp_path / "export2")]) == 1
    assert rel in capsys.readouterr().err and not list((tmp_path / "export2").iterdir())

    report = verify_table(table)
    assert not report.ok and report.failed == {"pages"}
    assert report.problems == [f"pages: {rel}: row group 1: could not verify page integrity, CRC checksum "
                               "verification failed for page_ordinal 0"]
    assert report.not_compared == {"lineage": ["split 'train' (its files are damaged)"]}
    assert main(["verify", table]) == 1
    text = capsys.readouterr().out
    assert "  pages       FAILED" in text and rel in text
    assert "  lineage     not compared: split 'train' (its files are damaged)" in text
    assert main(["verify", table, "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is False and doc["checks"]["pages"] is False and doc["checks"]["files"] is True


def test_the_duckdb_path_verifies_page_checksums(synthetic_table, capsys: pytest.CaptureFixture[str]) -> None:
    from idxlake.pipeline.inspect.sql import query

    table, _ = synthetic_table
    path, rel = _train_file(table)
    _flip_a_bit_in_an_image_page(path)
    assert query(table, "SELECT count(*) AS n FROM t", name="t", engine="duckdb").table["n"][0].as_py() == 400
    # a damaged file, named with the table and version: not a QueryError (a user's mistake, exit 2)
    with pytest.raises(DataCorruptionError, match=rf"{table}@v0: data file {rel} cannot be read: row group 1: "
                                                  ".*CRC checksum verification failed"):
        query(table, "SELECT md5(image) FROM t", name="t", engine="duckdb")
    assert main(["sql", table, "SELECT md5(image) FROM t", "--name", "t", "--engine", "duckdb"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("idxlake sql: error: ") and rel in err and err.count("\n") == 1


def test_payload_different_from_the_lineage_is_caught_by_export_and_verify(
        synthetic_table, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    table, _ = synthetic_table
    path, rel = _train_file(table)
    _payload_changed_without_checksums(path)
    out = tmp_path / "out"
    with pytest.raises(DataCorruptionError, match=r"exported train-images-idx3-ubyte\.gz \(split 'train'\) has "
                                                  r"sha256 [0-9a-f]{64}, the ingested source had [0-9a-f]{64}; "
                                                  "nothing was kept"):
        export(table, out)
    assert not list(out.iterdir())
    report = verify_table(table)
    assert "lineage" in report.failed and "pages" not in report.failed
    assert any(p.startswith("lineage: split 'train' images: sha256 of the stored payload is") for p in report.problems)
    assert not any("labels" in p for p in report.problems)
    assert any(p.startswith(f"files: {rel}: is ") for p in report.problems)  # size differs from the log


def test_healthy_table_verifies_and_exports_verified(synthetic_table, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    table, _ = synthetic_table
    assert verify_table(table).ok
    assert main(["export", table, str(tmp_path / "out")]) == 0
    assert capsys.readouterr().out.count("(sha256 equals the ingested sources)") == 2
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz"]
    # housekeeping is reported but does not fail verification
    (Path(table) / "split=train" / "part-orphan.parquet").write_bytes(b"x")
    (Path(table) / "_delta_log" / "00000000000000000001.json#1").write_text("{}")
    report = verify_table(table)
    assert report.ok and report.orphans == ["split=train/part-orphan.parquet"]
    assert report.stale_log_files == ["_delta_log/00000000000000000001.json#1"]
    assert main(["verify", table]) == 0
    out = capsys.readouterr().out
    assert "orphan (not in the log): split=train/part-orphan.parquet" in out and "verified: every check" in out


def test_missing_and_truncated_files_are_named(synthetic_table) -> None:
    table, _ = synthetic_table
    files = list(snapshot(table).files)
    gone, cut = Path(table) / files[0].path, Path(table) / files[-1].path
    gone.unlink()
    cut.write_bytes(cut.read_bytes()[:-100])
    report = verify_table(table)
    assert report.failed == {"files", "footers"}
    assert f"files: {files[0].path}: missing (the log of version 0 references it)" in report.problems
    assert any(p.startswith(f"footers: {files[-1].path}: footer does not read") for p in report.problems)
    with pytest.raises(DataCorruptionError, match=rf"data file {files[-1].path} cannot be read"):
        DeltaIterableDataset(table, split=files[-1].split)


def test_appended_split_has_no_single_lineage_but_its_pages_are_checked(synthetic_table) -> None:
    from idxlake import ingest

    table, source = synthetic_table
    ingest(source.root, table, mode="append", allow_duplicate=True)
    report = verify_table(table)
    assert report.ok and report.rows == 800 and not report.complete  # no problem, and NOT "verified"
    assert report.not_compared == {"lineage": [
        "split 'test' (2 ingested source pairs, appends: no single sha256)",
        "split 'train' (2 ingested source pairs, appends: no single sha256)"]}
    assert pc.sum(snapshot(table).dataset().to_table()["id"]).as_py() > 0


def test_verify_never_says_verified_without_comparing(synthetic_table, capsys: pytest.CaptureFixture[str]) -> None:
    """An append-built split (no single sha256) whose files delta-rs compacted (no page CRCs) printed
    "lineage ok", "pages ok" and "verified: every check holds" although neither was compared."""
    from deltalake import DeltaTable

    from idxlake import ingest

    table, source = synthetic_table
    ingest(source.root, table, mode="append", allow_duplicate=True)
    DeltaTable(table).optimize.compact()  # parquet-rs files: no page checksums
    assert main(["verify", table, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is True and doc["complete"] is False
    assert doc["checks"] == {"files": True, "footers": True, "row_counts": True, "pages": None, "lineage": None}
    assert all("written by delta-rs" in where for where in doc["not_compared"]["pages"])
    assert main(["verify", table]) == 0
    out = capsys.readouterr().out
    assert "verified" not in out.replace("NOT verified", "") and "no problem found, but NOT verified" in out
    assert "  lineage     not compared: split 'test'" in out and "  pages       not compared: split=" in out


@pytest.mark.parametrize("engine", ["datafusion", "duckdb"])
def test_show_detects_a_flipped_bit_naming_the_file(synthetic_table, engine: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    table, _ = synthetic_table
    path, rel = _train_file(table)
    _flip_a_bit_in_an_image_page(path)  # row group 1: ids 64..127
    assert main(["show", table, "--split", "train", "--where", "id < 4", "--engine", engine]) == 0
    capsys.readouterr()
    assert main(["show", table, "--split", "train", "--where", "id BETWEEN 70 AND 71", "--engine", engine]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"@v0: data file {rel} cannot be read" in err and "CRC checksum" in err


def test_verify_an_old_version_whose_files_were_vacuumed(synthetic_table, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from conftest import make_source

    from idxlake import ingest, vacuum

    table, _ = synthetic_table
    ingest(make_source(tmp_path / "new", rows={"test": 30}, seed=3).root, table)
    assert verify_table(table, version=0).ok and verify_table(table).ok
    removed = vacuum(table, retain_hours=0, force=True).files
    assert len(removed) == 1 and removed[0].startswith("split=test/")
    assert main(["verify", table, "--version", "0", "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["version"] == 0 and doc["checks"]["files"] is False
    assert doc["problems"] == [f"files: {removed[0]}: missing (the log of version 0 references it)"]
    assert main(["verify", table]) == 0


def test_verify_on_s3(s3_endpoint: dict[str, str], synthetic_source) -> None:
    from idxlake import ingest

    uri = "s3://lake/verified"
    ingest(synthetic_source.root, uri, storage_options=s3_endpoint, row_group_rows=64)
    report = verify_table(uri, storage_options=s3_endpoint)
    assert report.ok and report.rows == 400 and report.orphans == [] and report.stale_log_files == []


def test_export_and_verify_read_files_delta_rs_wrote(synthetic_table, tmp_path: Path) -> None:
    """delta-rs' DML writes the image column as binary_view: export and verify crashed (IndexError,
    'buffer is smaller than requested size') on a no-op UPDATE; a value of the wrong length is corruption."""
    from deltalake import DeltaTable

    from idxlake import export

    table, source = synthetic_table
    DeltaTable(table).update(predicate="split = 'test' AND id = 0", updates={"label": "label"})  # content unchanged
    out = export(table, tmp_path / "same", compress=False)
    assert all(s.verified for s in out)  # sha256 equal to the ingested sources, through the rewritten file
    assert (tmp_path / "same" / "t10k-images-idx3-ubyte").read_bytes() == gzip.decompress(
        (source.root / "t10k-images-idx3-ubyte.gz").read_bytes())
    assert verify_table(table).ok
    DeltaTable(table).update(predicate="split = 'test' AND id = 1", updates={"image": "X'0102'"})
    with pytest.raises(DataCorruptionError, match=r"row group 0: image values of 2\.\.784 bytes \(0 null\), the "
                                                  r"table's records are 784"):
        export(table, tmp_path / "bad")
    report = verify_table(table)
    assert not report.ok and "lineage" in report.failed
