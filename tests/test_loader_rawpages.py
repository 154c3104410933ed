"""Uncompressed image chunks read from their pages (``loaders/pages.py``) and straight into the arena's
region (``loaders/arena.py``): the same rows as pyarrow's decode, every page's CRC checked, bad pages
named, and no slot overwritten while a view of it lives."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import make_source
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from idxlake import DataCorruptionError, DeltaIterableDataset, SchemaMismatchError, ingest
from idxlake.loaders import pages
from idxlake.schemas import snapshot


def _chunk(data: bytes) -> tuple[np.ndarray, int, int]:
    """The image column chunk of row group 0 of a Parquet file: its bytes, byte offset and rows."""
    md = pq.ParquetFile(io.BytesIO(data)).metadata
    col = next(md.row_group(0).column(i) for i in range(md.num_columns)
               if md.row_group(0).column(i).path_in_schema == "image")
    start = col.data_page_offset
    return np.frombuffer(data, np.uint8, col.total_compressed_size, start).copy(), start, md.row_group(0).num_rows


def _write(values: list[bytes], **options: object) -> bytes:
    schema = pa.schema([pa.field("image", pa.binary(), nullable=False)])
    sink = io.BytesIO()
    pq.write_table(pa.table({"image": pa.array(values, pa.binary())}, schema=schema), sink, compression="none",
                   use_dictionary=False, **options)
    return sink.getvalue()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(record=st.integers(1, 300), rows=st.integers(1, 400), page=st.sampled_from([64, 1000, 1 << 20]),
       version=st.sampled_from(["1.0", "2.0"]), checksums=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_pages_give_what_pyarrow_decodes(record: int, rows: int, page: int, version: str, checksums: bool,
                                         seed: int) -> None:
    rng = np.random.default_rng(seed)
    values = [rng.integers(0, 256, record, dtype=np.uint8).tobytes() for _ in range(rows)]
    data = _write(values, data_page_size=page, data_page_version=version, write_page_checksum=checksums)
    buf, start, n = _chunk(data)
    parts = pages.read_pages(buf, record=record, rows=n, start=start, verify=True)
    got = np.concatenate(parts) if parts else np.empty((0, record), np.uint8)
    assert got.shape == (rows, record)
    assert got.tobytes() == b"".join(values)
    md = pq.ParquetFile(io.BytesIO(data)).metadata
    assert pages.plain_chunk(md, 0, 0) is not None  # the layout is recognised from the footer


@settings(max_examples=200, deadline=None)
@given(cut=st.integers(0, 400), flips=st.lists(st.integers(0, 10**6), max_size=4))
def test_damaged_chunks_raise_page_errors_never_index_errors(cut: int, flips: list[int]) -> None:
    values = [bytes([i]) * 16 for i in range(20)]
    buf, start, n = _chunk(_write(values, data_page_size=100, write_page_checksum=True))
    buf = buf[:len(buf) - cut % len(buf)].copy() if cut else buf
    for f in flips:
        buf[f % len(buf)] ^= 0xFF
    try:
        got = pages.read_pages(buf, record=16, rows=n, start=start, verify=True)
    except pages.PageError as exc:
        assert exc.offset >= start and "byte" in str(exc)
    else:  # only an undamaged chunk reads
        assert np.concatenate(got).tobytes() == b"".join(values)


def test_page_errors_name_what_was_found_and_expected() -> None:
    good = [b"\x01" * 8] * 10
    buf, start, n = _chunk(_write(good, write_page_checksum=True))
    buf[-3] ^= 0x10  # a record byte: the CRC catches it
    with pytest.raises(pages.PageError, match=rf"page at byte {start}: CRC-32 0x[0-9a-f]{{8}} computed, "
                                              r"0x[0-9a-f]{8} stored"):
        pages.read_pages(buf, record=8, rows=n, start=start, verify=True)
    assert pages.read_pages(buf, record=8, rows=n, start=start, verify=False)  # PAGE_CHECKSUMS off: not checked
    bad = [*good[:4], b"\x01" * 7, *good[5:]]
    buf, start, n = _chunk(_write(bad, write_page_checksum=True))
    with pytest.raises(pages.PageError, match=r"holds 119 value bytes for 10 values; 8-byte values need 120") as info:
        pages.read_pages(buf, record=8, rows=n, start=start, verify=True)
    assert info.value.corrupt
    swapped = [*good[:4], b"\x01" * 7, b"\x01" * 9, *good[6:]]  # the same bytes, two lengths wrong
    buf, start, n = _chunk(_write(swapped))
    with pytest.raises(pages.PageError, match=r"value 4 \(page at byte \d+\) is 7 bytes, expected 8") as info:
        pages.read_pages(buf, record=8, rows=n, start=start, verify=True)
    assert not info.value.corrupt  # readable, but not the contract's records
    buf, start, n = _chunk(_write(good))
    with pytest.raises(pages.PageError, match=r"holds 10 values, the row group 11"):
        pages.read_pages(buf, record=8, rows=11, start=start, verify=True)


def test_only_plain_uncompressed_required_chunks_take_the_raw_path() -> None:
    values = [b"\x02" * 8] * 10
    for options, raw in (({}, True), ({"compression": "lz4"}, False), ({"use_dictionary": True}, False)):
        sink = io.BytesIO()
        table = pa.table({"image": pa.array(values, pa.binary())},
                         schema=pa.schema([pa.field("image", pa.binary(), nullable=False)]))
        pq.write_table(table, sink, **{"compression": "none", "use_dictionary": False, **options})
        assert (pages.plain_chunk(pq.ParquetFile(io.BytesIO(sink.getvalue())).metadata, 0, 0) is not None) == raw
    sink = io.BytesIO()
    pq.write_table(pa.table({"image": pa.array(values, pa.binary())}), sink, compression="none")  # nullable
    assert pages.plain_chunk(pq.ParquetFile(io.BytesIO(sink.getvalue())).metadata, 0, 0) is None


def test_buffer_pool_reuses_a_buffer_only_after_its_last_view_is_gone() -> None:
    pool = pages.BufferPool(keep=2)
    a = pool.take(1000)
    view = a[10:20]
    tensor = torch.from_numpy(np.ndarray((2, 4), np.uint8, view, 1, (5, 1)))
    del a, view
    b = pool.take(1000)
    assert pool.allocated == 2  # the first buffer is still viewed by the tensor
    b[:] = 7
    del b
    c = pool.take(500)
    assert pool.allocated == 2 and (c == 7).all()  # the second came back and is reused
    del tensor
    d = pool.take(1000)
    assert pool.allocated == 2 and len(d) == 1000


@pytest.fixture
def tables(tmp_path: Path) -> tuple[str, str]:
    """The same synthetic source ingested UNCOMPRESSED (read raw) and LZ4_RAW (read by pyarrow)."""
    src = make_source(tmp_path / "src", rows={"train": 700, "test": 50}, seed=3)
    raw, lz4 = str(tmp_path / "raw"), str(tmp_path / "lz4")
    ingest(src.root, raw, codec="UNCOMPRESSED", row_group_rows=96)
    ingest(src.root, lz4, row_group_rows=96)
    return raw, lz4


def _epochs(ds: DeltaIterableDataset, epochs: range) -> list[list[dict[str, torch.Tensor]]]:
    out = []
    for e in epochs:
        ds.set_epoch(e)
        out.append([{k: v.clone() for k, v in b.items()} for b in ds])
    return out


def _same(a: list, b: list) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert len(x) == len(y)
        for bx, by in zip(x, y, strict=True):
            assert bx.keys() == by.keys()
            for k in bx:
                assert bx[k].dtype == by[k].dtype and torch.equal(bx[k], by[k]), k


def test_ingest_writes_one_page_per_uncompressed_image_chunk(tables: tuple[str, str]) -> None:
    raw, _ = tables
    for f in snapshot(raw).files:
        data = (Path(raw) / f.path).read_bytes()
        md = pq.ParquetFile(io.BytesIO(data)).metadata
        for g in range(md.num_row_groups):
            col = md.row_group(g).column(2)
            assert col.path_in_schema == "image"
            buf = np.frombuffer(data, np.uint8, col.total_compressed_size, col.data_page_offset)
            assert len(pages.read_pages(buf, record=784, rows=md.row_group(g).num_rows, start=0, verify=True)) == 1


@pytest.mark.parametrize("options", [
    {"cache_bytes": 0},
    {"cache_bytes": 0, "prefetch_depth": 1},
    {"cache_bytes": 0, "prefetch": False},
    {"cache_bytes": 0, "filter": "id IN (1, 2, 5, 7, 100, 101, 102, 103, 300, 650) OR label = 3"},
    {"cache_bytes": None},
    {"cache_bytes": 0, "drop_last": True, "columns": ("image",)},
])
def test_raw_reads_give_the_batches_pyarrow_gives(tables: tuple[str, str], options: dict) -> None:
    raw, lz4 = tables
    make = lambda t: DeltaIterableDataset(t, split="train", batch_size=64, seed=5, **options)  # noqa: E731
    _same(_epochs(make(raw), range(4)), _epochs(make(lz4), range(4)))


def test_later_epochs_read_straight_into_the_arena(tables: tuple[str, str]) -> None:
    raw, lz4 = tables
    ds = DeltaIterableDataset(raw, split="train", batch_size=64, cache_bytes=0)
    _epochs(ds, range(1))
    arena = ds._slots
    assert arena is not None and arena.region is not None and arena.copied == arena.decoded  # headers unknown yet
    before = arena.decoded
    _epochs(ds, range(1, 4))
    assert ds._slots is arena and arena.decoded > before
    assert arena.copied == before  # every later read landed in the region: nothing copied
    assert ds._reader.pool.allocated <= 8 + 2  # the first epoch's reads; none since
    ds_lz4 = DeltaIterableDataset(lz4, split="train", batch_size=64, cache_bytes=0)
    _epochs(ds_lz4, range(2))
    assert ds_lz4._slots is not None and ds_lz4._slots.region is None  # pyarrow-decoded tables copy in


def test_an_abandoned_pass_never_overwrites_the_next_ones_rows(tables: tuple[str, str]) -> None:
    raw, lz4 = tables
    ds, ref = (DeltaIterableDataset(t, split="train", batch_size=32, cache_bytes=0, prefetch_depth=3)
               for t in (raw, lz4))
    expected = _epochs(ref, range(6))
    got = []
    for e in range(6):
        ds.set_epoch(e)
        it = iter(ds)
        first = [next(it) for _ in range(3)]  # left with reads in flight
        del it
        ds.set_epoch(e)
        got.append([{k: v.clone() for k, v in b.items()} for b in ds])
        assert all(torch.equal(a["id"], b["id"]) for a, b in zip(first, got[-1], strict=False))
    _same(got, expected)


def test_raw_reads_under_dataloader_workers(tables: tuple[str, str]) -> None:
    raw, lz4 = tables
    ids = {}
    for t in tables:
        ds = DeltaIterableDataset(t, split="train", batch_size=50, cache_bytes=0)
        loader = ds.dataloader(num_workers=2)
        ids[t] = [torch.cat([b["id"] for b in loader]) for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(ids[raw], ids[lz4], strict=True))
    assert sorted(ids[raw][0].tolist()) == list(range(700))


def _train_file(table: str) -> Path:
    return Path(table) / next(f for f in snapshot(table).files if f.split == "train").path


def test_a_flipped_bit_in_a_raw_page_names_file_row_group_and_byte(tables: tuple[str, str]) -> None:
    raw, _ = tables
    path = _train_file(raw)
    col = pq.ParquetFile(path).metadata.row_group(2).column(2)
    data = bytearray(path.read_bytes())
    data[col.data_page_offset + col.total_compressed_size // 2] ^= 0x08
    path.write_bytes(bytes(data))
    rel = path.relative_to(raw).as_posix()
    named = (rf"{raw}@v0: data file {rel} row group 2 cannot be read: page at byte {col.data_page_offset}: CRC-32 "
             r".* stored; run `idxlake verify")
    with pytest.raises(DataCorruptionError, match=named):
        for _ in DeltaIterableDataset(raw, split="train", batch_size=64, shuffle=False, cache_bytes=0):
            pass


def test_a_record_of_the_wrong_length_is_a_schema_mismatch(tables: tuple[str, str]) -> None:
    raw, _ = tables
    path = _train_file(raw)
    table = pq.read_table(path)
    images = table.column("image").to_pylist()
    images[5], images[6] = images[5][:-1], images[6] + b"\0"  # the page's size stays right
    table = table.set_column(2, table.schema.field("image"), pa.array(images, pa.binary()))
    pq.write_table(table, path, compression="none", row_group_size=96, write_page_checksum=True,
                   data_page_size=1 << 30, use_dictionary=False)
    with pytest.raises(SchemaMismatchError, match=r"row group 0: value 5 \(page at byte \d+\) is 783 bytes, expected "
                                                  r"784 \(28x28 uint8\)"):
        for _ in DeltaIterableDataset(raw, split="train", batch_size=64, shuffle=False, cache_bytes=0):
            pass


def test_raw_pages_off_reads_with_pyarrow(tables: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    raw, _ = tables
    monkeypatch.setattr(pages, "RAW_PAGES", False)
    ds = DeltaIterableDataset(raw, split="train", batch_size=64, cache_bytes=0)
    _epochs(ds, range(2))
    assert ds._slots is not None and ds._slots.region is None
