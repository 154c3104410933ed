"""``idxlake export --format parquet``: the live rows of one version as plain Parquet."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from conftest import SyntheticSource, make_source

from idxlake import export_parquet, ingest
from idxlake.cli import main
from idxlake.schemas import META_KEY, TableExistsError, snapshot


def test_live_rows_only_after_a_replace(tmp_path: Path, synthetic_table: tuple[str, SyntheticSource]) -> None:
    table, _ = synthetic_table
    bigger = make_source(tmp_path / "bigger", rows={"train": 500}, seed=7)
    ingest(bigger.root, table, row_group_rows=64)  # replaces train: its old files stay in the directory
    assert pads.dataset(table, format="parquet", exclude_invalid_files=True).count_rows() == 300 + 100 + 500
    done = export_parquet(table, str(tmp_path / "out"))
    assert done.version == 1 and done.rows == {"test": 100, "train": 500}
    flat = pq.read_table(tmp_path / "out")
    assert flat.num_rows == 600
    live = snapshot(table)
    assert flat.schema.names == live.schema.names and flat.schema.field("image").metadata[META_KEY.encode()]
    train = flat.filter(pads.field("split") == "train").sort_by("id")
    assert np.array_equal(train.column("label").to_numpy(), bigger.arrays["train"][1])
    assert train.column("image")[7].as_py() == bigger.arrays["train"][0][7].tobytes()
    # The same row-group layout: one file per live file, one row group per row group.
    want = [pq.ParquetFile(live.file_path(f)).metadata for f in live.files]
    got = [pq.ParquetFile(p).metadata for p in done.files]
    assert [[m.row_group(i).num_rows for i in range(m.num_row_groups)] for m in got] == \
           [[m.row_group(i).num_rows for i in range(m.num_row_groups)] for m in want]


def test_version_and_cli(tmp_path: Path, synthetic_table: tuple[str, SyntheticSource],
                         capsys: pytest.CaptureFixture[str]) -> None:
    table, _ = synthetic_table
    ingest(make_source(tmp_path / "b", rows={"train": 64}, seed=1).root, table, row_group_rows=64)
    assert main(["export", table, str(tmp_path / "v0"), "--format", "parquet", "--version", "0"]) == 0
    assert "version 0: test 100, train 300 rows in 2 files" in capsys.readouterr().out
    assert pq.read_table(tmp_path / "v0").num_rows == 400
    assert main(["export", table, str(tmp_path / "v0"), "--format", "parquet"]) == 2
    assert "already holds files" in capsys.readouterr().err
    with pytest.raises(TableExistsError):
        export_parquet(table, str(tmp_path / "v0"))
    assert main(["export", table, str(tmp_path / "tr"), "--format", "parquet", "--split", "train"]) == 0
    assert pq.read_table(tmp_path / "tr").num_rows == 64
    assert main(["export", table, str(tmp_path / "no"), "--format", "parquet", "--split", "valid"]) == 2
    assert "no split(s) ['valid']" in capsys.readouterr().err


def test_json_document(tmp_path: Path, synthetic_table: tuple[str, SyntheticSource],
                       capsys: pytest.CaptureFixture[str]) -> None:
    import json

    table, _ = synthetic_table
    assert main(["export", table, str(tmp_path / "j"), "--format", "parquet", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["format"] == "parquet" and doc["version"] == 0 and doc["rows"] == {"test": 100, "train": 300}
    assert doc["row_groups"] == 7 and all(Path(f).is_file() for f in doc["files"])


def test_a_flipped_bit_is_not_copied_into_the_snapshot(tmp_path: Path,
                                                       synthetic_table: tuple[str, SyntheticSource]) -> None:
    from test_integrity import _flip_a_bit_in_an_image_page

    from idxlake.schemas import DataCorruptionError

    table, _ = synthetic_table
    f = next(f for f in snapshot(table).files if f.split == "train")
    _flip_a_bit_in_an_image_page(Path(table) / f.path)
    with pytest.raises(DataCorruptionError, match=rf"{table}@v0: data file {f.path} row group 1 cannot be read: "
                                                  ".*CRC checksum verification failed"):
        export_parquet(table, str(tmp_path / "out"))
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file()]  # nothing half-written is kept


def test_the_snapshot_carries_page_checksums(tmp_path: Path, synthetic_table: tuple[str, SyntheticSource]) -> None:
    table, _ = synthetic_table
    done = export_parquet(table, str(tmp_path / "out"))
    path = Path(done.files[0])
    md = pq.ParquetFile(path).metadata
    image = next(md.row_group(1).column(i) for i in range(md.num_columns)
                 if md.row_group(1).column(i).path_in_schema == "image")
    data = bytearray(path.read_bytes())
    data[image.data_page_offset + image.total_compressed_size // 2] ^= 0x04
    path.write_bytes(bytes(data))
    with pytest.raises(OSError, match="CRC checksum verification failed"):
        pq.ParquetFile(path, page_checksum_verification=True).read_row_group(1)


@pytest.mark.parametrize("codec", ["UNCOMPRESSED", "SNAPPY"])
def test_every_ingest_codec_exports(tmp_path: Path, synthetic_source: SyntheticSource, codec: str) -> None:
    table = str(tmp_path / "t")
    ingest(synthetic_source.root, table, row_group_rows=64, codec=codec)  # type: ignore[arg-type]
    done = export_parquet(table, str(tmp_path / "out"))
    assert done.rows == {"test": 100, "train": 300}
    assert pq.ParquetFile(done.files[0]).metadata.row_group(0).column(0).compression == codec
