"""LZ4_RAW image chunks decompressed by the loader itself (``loaders/lz4pages.py``) into the arena's slots: the
rows pyarrow decodes, every page's CRC checked on its stored bytes, every size checked before the decoder sees it."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from batches import assert_same, epochs_of
from conftest import make_source
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from idxlake import DataCorruptionError, DeltaIterableDataset, ingest
from idxlake.loaders import pages
from idxlake.loaders.lz4pages import decompress_pages
from idxlake.schemas import snapshot


def _write(values: list[bytes], **options: object) -> bytes:
    schema = pa.schema([pa.field("image", pa.binary(), nullable=False)])
    sink = io.BytesIO()
    pq.write_table(pa.table({"image": pa.array(values, pa.binary())}, schema=schema), sink, compression="lz4",
                   use_dictionary=False, **options)
    return sink.getvalue()


def _chunk(data: bytes) -> tuple[np.ndarray, int, int, pages.Chunk]:
    md = pq.ParquetFile(io.BytesIO(data)).metadata
    chunk = pages.plain_chunk(md, 0, 0, record=1)
    assert chunk is not None and chunk.codec == "LZ4_RAW"
    return np.frombuffer(data, np.uint8, chunk.size, chunk.offset).copy(), chunk.offset, md.row_group(0).num_rows, chunk


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(record=st.integers(1, 300), rows=st.integers(1, 400), page=st.sampled_from([64, 1000, 1 << 20]),
       version=st.sampled_from(["1.0", "2.0"]), checksums=st.booleans(), seed=st.integers(0, 2**32 - 1),
       repetitive=st.booleans(), batch=st.sampled_from([1, 7, 1024]))
def test_lz4_pages_give_what_pyarrow_decodes(record: int, rows: int, page: int, version: str, checksums: bool,
                                             seed: int, repetitive: bool, batch: int) -> None:
    rng = np.random.default_rng(seed)
    high = 3 if repetitive else 256  # compressible values, and incompressible ones
    values = [rng.integers(0, high, record, dtype=np.uint8).tobytes() for _ in range(rows)]
    data = _write(values, data_page_size=page, data_page_version=version, write_page_checksum=checksums,
                  write_batch_size=batch)  # pyarrow cuts pages between write batches: small ones, many pages
    buf, start, n, _ = _chunk(data)
    out = np.empty(n * (record + 4), np.uint8)
    got = decompress_pages(buf, out, record=record, rows=n, start=start, verify=True)
    assert got.shape == (rows, record) and got.tobytes() == b"".join(values)
    assert got.base is out or np.shares_memory(got, out)  # the records are where they were decompressed


@settings(max_examples=200, deadline=None)
@given(cut=st.integers(0, 400), flips=st.lists(st.integers(0, 10**6), max_size=4), verify=st.booleans())
def test_damaged_lz4_chunks_raise_page_errors_only(cut: int, flips: list[int], verify: bool) -> None:
    values = [bytes([i % 7]) * 20 + bytes(range(i % 50, i % 50 + 12)) for i in range(200)]
    buf, start, n, _ = _chunk(_write(values, data_page_size=1000, write_batch_size=50))  # several pages
    damaged = buf[:max(0, len(buf) - cut)].copy()
    for f in flips:
        if len(damaged):
            damaged[f % len(damaged)] ^= 1 << (f % 8)
    guarded = np.full(n * 36 + 2 * 4096, 0xA5, np.uint8)  # guard bytes on both sides of the output
    out = guarded[4096:-4096]
    try:
        got = decompress_pages(damaged, out, record=32, rows=n, start=start, verify=verify)
    except pages.PageError:
        got = None
    finally:
        assert (guarded[:4096] == 0xA5).all() and (guarded[-4096:] == 0xA5).all()  # nothing written outside
    if got is None:
        return
    assert got.shape == (n, 32)  # undamaged, or damage that still decodes to the right sizes (CRCs off)
    if verify and not cut and not flips:
        assert got.tobytes() == b"".join(values)


def test_lz4_page_errors_name_what_was_found_and_expected() -> None:
    values = [bytes([i % 5]) * 32 for i in range(100)]
    buf, start, n, _ = _chunk(_write(values, write_page_checksum=False))
    with pytest.raises(pages.PageError, match=r"holds 3600 value bytes once decompressed for 100 values; "
                                              r"31-byte values need 3500"):
        decompress_pages(buf, np.empty(n * 35, np.uint8), record=31, rows=n, start=start, verify=True)
    with pytest.raises(ValueError, match=r"an output of 10 bytes for 100 values of 36"):
        decompress_pages(buf, np.empty(10, np.uint8), record=32, rows=n, start=start, verify=True)
    with pytest.raises(pages.PageError, match=r"holds 100 values, the row group 101"):
        decompress_pages(buf, np.empty(101 * 36, np.uint8), record=32, rows=101, start=start, verify=True)
    garbled = buf.copy()
    body = len(garbled) - 40
    garbled[body:] = 0xFF  # the LZ4 block's tail: a match reaching past the output
    with pytest.raises(pages.PageError, match=rf"page at byte {start} (does not decompress as LZ4_RAW|decompresses)"):
        decompress_pages(garbled, np.empty(n * 36, np.uint8), record=32, rows=n, start=start, verify=False)
    lengths = [bytes([1]) * 32] * 5 + [bytes([1]) * 31] + [bytes([1]) * 33] + [bytes([1]) * 32] * 3
    buf, start, n, _ = _chunk(_write(lengths))
    with pytest.raises(pages.PageError, match=r"value 5 \(page at byte \d+\) is 31 bytes, expected 32") as info:
        decompress_pages(buf, np.empty(n * 36, np.uint8), record=32, rows=n, start=start, verify=True)
    assert not info.value.corrupt  # readable, not this table's records


@pytest.fixture
def lz4_table(tmp_path: Path) -> str:
    src = make_source(tmp_path / "src", rows={"train": 700, "test": 50}, seed=11)
    table = str(tmp_path / "lz4")
    ingest(src.root, table, row_group_rows=96)
    ingest(src.root, table, row_group_rows=64, mode="append", allow_duplicate=True)
    return table


@pytest.mark.parametrize("options", [
    {"cache_bytes": 0},
    {"cache_bytes": 0, "prefetch": False},
    {"cache_bytes": 0, "shuffle": False, "batch_size": 100},
    {"cache_bytes": 0, "filter": "id IN (1, 2, 5, 7, 100, 101, 102, 103, 300, 650, 1200) OR label = 3"},
    {"cache_bytes": 0, "drop_last": True, "columns": ("image",), "rank": 1, "world_size": 2},
    {"cache_bytes": None},
])
def test_lz4_reads_give_the_batches_pyarrow_gives(lz4_table: str, options: dict) -> None:
    options = {"batch_size": 64, "seed": 5, **options}
    ds = DeltaIterableDataset(lz4_table, split="train", **options)
    got = epochs_of(ds, range(3))
    assert_same(got, epochs_of(DeltaIterableDataset(lz4_table, split="train", **options), range(3), raw_pages=False))
    if options["cache_bytes"] == 0 and "filter" not in options:
        assert ds._slots.region is not None and ds._slots.copied == 0  # decompressed into the slots: no copy


def test_lz4_reads_under_dataloader_workers(lz4_table: str) -> None:
    got = {}
    for raw_pages in (True, False):
        before, pages.RAW_PAGES = pages.RAW_PAGES, raw_pages
        try:
            ds = DeltaIterableDataset(lz4_table, split="train", batch_size=50, cache_bytes=0)
            loader = ds.dataloader(num_workers=2)
            got[raw_pages] = [[{k: v.clone() for k, v in b.items()} for b in loader] for _ in range(2)]
        finally:
            pages.RAW_PAGES = before
    assert_same(got[True], got[False])


def test_a_flipped_bit_in_an_lz4_page_names_file_row_group_and_byte(lz4_table: str) -> None:
    f = next(f for f in snapshot(lz4_table).files if f.split == "train")
    path = Path(lz4_table) / f.path
    col = pq.ParquetFile(path).metadata.row_group(3).column(2)
    data = bytearray(path.read_bytes())
    data[col.data_page_offset + col.total_compressed_size // 2] ^= 0x20
    path.write_bytes(bytes(data))
    with pytest.raises(DataCorruptionError, match=rf"{f.path} row group 3 cannot be read: page at byte \d+: CRC-32 "
                                                  r".* stored; run `idxlake verify"):
        for _ in DeltaIterableDataset(lz4_table, split="train", batch_size=64, shuffle=False, cache_bytes=0):
            pass


def test_pages_are_decoded_as_raw_blocks_of_the_promised_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """cramjam reads a 4-byte size prefix unless told the output length: a raw block whose first bytes
    look like one would decode wrongly, so every call passes ``output_len`` (cramjam >= 2.11)."""
    import cramjam

    block = bytes([0x40, 1, 0, 0, 0])  # a raw block of 4 literals, also readable as "size 320" + a block
    assert cramjam.lz4.decompress_block_into(block, np.zeros(4, np.uint8).data, output_len=4) == 4
    calls = []
    real = cramjam.lz4.decompress_block_into

    def recording(src, dst, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(kwargs)
        return real(src, dst, **kwargs)

    monkeypatch.setattr(cramjam.lz4, "decompress_block_into", recording)
    rng = np.random.default_rng(1)
    values = [rng.integers(0, 256, 16, dtype=np.uint8).tobytes() for _ in range(400)]
    buf, start, n, _ = _chunk(_write(values, data_page_size=1000, write_batch_size=50))  # several pages
    got = decompress_pages(buf, np.empty(n * 20, np.uint8), record=16, rows=n, start=start, verify=True)
    assert got.tobytes() == b"".join(values)
    assert len(calls) > 1 and all(c.get("output_len", 0) > 0 for c in calls)  # several pages, each sized


def test_a_footer_claiming_more_rows_than_the_log_is_corrupt(lz4_table: str) -> None:
    import dataclasses

    ds = DeltaIterableDataset(lz4_table, split="train", batch_size=64, cache_bytes=0)
    plan = ds.plan
    lying = dataclasses.replace(plan.files[0], num_records=10)  # fewer than a row group holds
    ds._reader.plan = dataclasses.replace(plan, files=(lying, *plan.files[1:]))  # what the reader sizes by
    with pytest.raises(DataCorruptionError, match=r"the row group claims \d+ rows, the Delta log records 10"):
        for _ in ds:
            pass
