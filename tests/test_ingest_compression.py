"""``compression_level`` / ``--compression-level``: the codec's level reaches the Parquet files (LZ4_RAW
levels of 3 and above are LZ4HC: smaller pages), the loader reads the same rows, and a level the codec
does not have is refused before anything is written."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from conftest import SyntheticSource, make_source

from idxlake import DeltaIterableDataset, IngestConfigError, ingest, write_idx
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
    ("SNAPPY", 3, r"codec SNAPPY has no compression levels; drop --compression-level"),
    ("UNCOMPRESSED", 1, r"codec UNCOMPRESSED has no compression levels"),
])
def test_a_level_the_codec_lacks_is_refused_before_writing(tmp_path: Path, synthetic_source, codec: str,
                                                           level: int, message: str) -> None:
    table = tmp_path / "t"
    with pytest.raises(IngestConfigError, match=message):
        ingest(synthetic_source.root, str(table), codec=codec, compression_level=level)  # type: ignore[arg-type]
    assert not table.exists()


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
