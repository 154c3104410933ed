"""``compression_level`` / ``--compression-level``: the codec's level reaches the Parquet files (LZ4_RAW
levels of 3 and above are LZ4HC: smaller pages), the loader reads the same rows, and a level the codec
does not have is refused before anything is written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import SyntheticSource, make_source

import idxlake.pipeline.ingest.job as job
from idxlake import DeltaIterableDataset, IngestConfigError, ingest, optimize, snapshot, write_idx
from idxlake.cli import main


def _image_bytes(table: str) -> tuple[int, set[str]]:
    """Compressed bytes of the ``image`` column chunks, and the codecs named in the footers."""
    size, codecs = 0, set()
    for path in Path(table).rglob("*.parquet"):
        meta = pq.ParquetFile(path).metadata
        for rg in range(meta.num_row_groups):
            column = meta.row_group(rg).column(meta.schema.names.index("image"))
            size += column.total_compressed_size
            codecs.add(column.compression)
    return size, codecs


@pytest.fixture
def smooth_source(tmp_path: Path) -> SyntheticSource:
    """Compressible records (MNIST-like runs of equal bytes), so that the level shows in the sizes."""
    source = make_source(tmp_path / "src", rows={"train": 400})
    images, _ = source.arrays["train"]
    smooth = (images // 64 * 64)
    smooth[:, :, :14] = 0
    write_idx(source.root / "train-images-idx3-ubyte.gz", smooth)
    source.arrays["train"] = (smooth, source.arrays["train"][1])
    return source


def test_lz4hc_level_writes_smaller_pages_and_reads_the_same_rows(tmp_path: Path, smooth_source) -> None:
    default, hc = str(tmp_path / "default"), str(tmp_path / "hc")
    ingest(smooth_source.root, default, row_group_rows=64)
    ingest(smooth_source.root, hc, row_group_rows=64, compression_level=9)
    (fast, fast_codecs), (small, small_codecs) = _image_bytes(default), _image_bytes(hc)
    assert fast_codecs == small_codecs == {"LZ4"}  # pyarrow's name of LZ4_RAW
    assert small < 0.95 * fast
    batches = {t: list(DeltaIterableDataset(t, split="train", batch_size=50, seed=1, cache_bytes=0))
               for t in (default, hc)}
    for a, b in zip(batches[default], batches[hc], strict=True):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["id"], b["id"])
    ids = torch.cat([b["id"] for b in batches[hc]])
    expected = torch.from_numpy(smooth_source.arrays["train"][0]).unsqueeze(1)[ids]
    assert torch.equal(torch.cat([b["image"] for b in batches[hc]]), expected)


@pytest.mark.parametrize(("codec", "level", "message"), [
    ("LZ4_RAW", 13, r"compression level 13 is outside LZ4_RAW's range 1\.\.12"),
    ("LZ4_RAW", 0, r"compression level 0 is outside LZ4_RAW's range 1\.\.12"),
    ("ZSTD", 23, r"compression level 23 is outside ZSTD's range .*\.\.22"),
    ("SNAPPY", 3, r"codec SNAPPY has no compression levels; give no level, or use LZ4_RAW"),
    ("UNCOMPRESSED", 1, r"codec UNCOMPRESSED has no compression levels"),
    ("LZ4_RAW", 6.5, r"compression level must be an integer, got 6\.5"),
    ("LZ4_RAW", "6", r"compression level must be an integer, got '6'"),
    ("LZ4_RAW", True, r"compression level must be an integer, got True"),
    ("GZIP", None, r"unknown codec 'GZIP'; use one of LZ4_RAW, SNAPPY, UNCOMPRESSED, ZSTD"),
])
def test_a_level_the_codec_lacks_is_refused_before_writing(tmp_path: Path, synthetic_source, codec: str,
                                                           level: object, message: str,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    table = tmp_path / "t"
    written = []
    monkeypatch.setattr(job, "write_split", lambda *a, **k: written.append(a))
    with pytest.raises(IngestConfigError, match=message):
        ingest(synthetic_source.root, str(table), codec=codec, compression_level=level)  # type: ignore[arg-type]
    assert not table.exists() and not written  # refused before the first file


def test_numpy_integer_levels_are_taken(tmp_path: Path, smooth_source) -> None:
    table = str(tmp_path / "t")
    ingest(smooth_source.root, table, row_group_rows=64, compression_level=np.int64(9))  # type: ignore[arg-type]
    default = str(tmp_path / "d")
    ingest(smooth_source.root, default, row_group_rows=64)
    assert _image_bytes(table)[0] < 0.95 * _image_bytes(default)[0]


def test_optimize_keeps_a_level_only_when_given_again(tmp_path: Path, smooth_source) -> None:
    sizes = {}
    for name, level in (("default", None), ("again", 9)):
        table = str(tmp_path / name)
        ingest(smooth_source.root, table, row_group_rows=64, compression_level=9)
        ingest(smooth_source.root, table, mode="append", allow_duplicate=True, compression_level=9)
        result = optimize(table, compression_level=level)
        assert result.compacted == ["train"]
        live = {str(Path(table) / f.path) for f in snapshot(table).files}
        sizes[name] = sum(pq.ParquetFile(p).metadata.row_group(rg).column(2).total_compressed_size
                          for p in live for rg in range(pq.ParquetFile(p).metadata.num_row_groups))
    assert sizes["again"] < 0.95 * sizes["default"]  # None: the codec's default level (footers lack the level)
    ingest(smooth_source.root, str(tmp_path / "again"), mode="append", allow_duplicate=True)
    with pytest.raises(IngestConfigError, match="outside LZ4_RAW's range"):
        optimize(str(tmp_path / "again"), compression_level=99)


def test_cli_compression_level(tmp_path: Path, smooth_source, capsys: pytest.CaptureFixture) -> None:
    table = str(tmp_path / "t")
    assert main(["ingest", str(smooth_source.root), table, "--compression-level", "13", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err == "idxlake ingest: error: compression level 13 is outside LZ4_RAW's range 1..12\n"
    assert main(["ingest", str(smooth_source.root), table, "--codec", "ZSTD", "--compression-level", "19",
                 "--row-group-rows", "64", "--no-progress"]) == 0
    zstd19, codecs = _image_bytes(table)
    assert codecs == {"ZSTD"}
    plain = str(tmp_path / "plain")
    ingest(smooth_source.root, plain, row_group_rows=64, codec="ZSTD")
    assert zstd19 < _image_bytes(plain)[0]
