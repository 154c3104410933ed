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
from idxlake.loaders import mapped, pages
from idxlake.schemas import snapshot


@pytest.fixture(autouse=True)
def _slots(monkeypatch: pytest.MonkeyPatch) -> None:
    """Local chunks read into the region's slots, as every other store's are (test_loader_mapped.py
    covers local files mapped into the arena)."""
    monkeypatch.setattr(mapped, "MAP_LOCAL_FILES", False)


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
    assert pages.plain_chunk(md, 0, 0, record=record) is not None  # the layout is recognised from the footer


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


def test_only_plain_uncompressed_or_lz4_raw_required_chunks_take_the_raw_path() -> None:
    values = [b"\x02" * 8] * 10
    for options, raw in (({}, "UNCOMPRESSED"), ({"compression": "lz4"}, "LZ4_RAW"), ({"compression": "zstd"}, None),
                         ({"compression": "snappy"}, None), ({"use_dictionary": True}, None)):
        sink = io.BytesIO()
        table = pa.table({"image": pa.array(values, pa.binary())},
                         schema=pa.schema([pa.field("image", pa.binary(), nullable=False)]))
        pq.write_table(table, sink, **{"compression": "none", "use_dictionary": False, **options})
        chunk = pages.plain_chunk(pq.ParquetFile(io.BytesIO(sink.getvalue())).metadata, 0, 0, record=8)
        assert (chunk.codec if chunk is not None else None) == raw
    sink = io.BytesIO()
    pq.write_table(pa.table({"image": pa.array(values, pa.binary())}), sink, compression="none")  # nullable
    assert pages.plain_chunk(pq.ParquetFile(io.BytesIO(sink.getvalue())).metadata, 0, 0, record=8) is None


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


def test_later_epochs_read_straight_into_the_arena(tables: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
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
    arena = ds_lz4._slots  # LZ4_RAW pages decompress into the slots from the first epoch: the layout is known
    assert arena is not None and arena.region is not None and arena.copied == 0 and arena.decoded == 2 * 8
    monkeypatch.setattr(pages, "RAW_PAGES", False)
    ds_pyarrow = DeltaIterableDataset(lz4, split="train", batch_size=64, cache_bytes=0)
    _epochs(ds_pyarrow, range(1))
    assert ds_pyarrow._slots is not None and ds_pyarrow._slots.region is None  # pyarrow-decoded tables copy in


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


def test_a_page_of_another_encoding_is_refused() -> None:
    values = [b"\x03" * 8] * 10
    buf, start, n = _chunk(_write(values, column_encoding={"image": "DELTA_LENGTH_BYTE_ARRAY"}))
    with pytest.raises(pages.PageError, match=r"has encoding 6, expected PLAIN \(0\)"):
        pages.read_pages(buf, record=8, rows=n, start=start, verify=True)


@pytest.mark.parametrize("element", [0x01, 0x02])  # list<bool> (true, false)
def test_a_damaged_header_with_a_huge_container_fails_at_once(element: int) -> None:
    count = bytes([0x80] * 8 + [0x40])  # varint 2**62
    for head in (bytes([0x99, 0xF0 | element]) + count, bytes([0x9B]) + count + bytes([0x11])):  # list, map
        buf = np.frombuffer(head + b"\0" * 64, np.uint8).copy()
        with pytest.raises(pages.PageError, match=r"page header at byte 100 does not parse \(a container of "):
            pages.read_pages(buf, record=8, rows=1, start=100, verify=True)
    with pytest.raises(pages.PageError, match=r"does not parse \(it runs past the chunk\)"):
        pages.read_pages(np.frombuffer(bytes([0x15]), np.uint8).copy(), record=8, rows=1, start=0, verify=True)


def test_a_footer_that_sizes_a_chunk_past_the_file_is_left_to_pyarrow() -> None:
    data = _write([b"\x04" * 8] * 10)
    md = pq.ParquetFile(io.BytesIO(data)).metadata
    col = md.row_group(0).column(0)
    assert pages.plain_chunk(md, 0, 0, record=8, file_size=len(data)) is not None
    assert pages.plain_chunk(md, 0, 0, record=8, file_size=col.data_page_offset + col.total_compressed_size - 1) is None
    assert pages.plain_chunk(md, 0, 0, record=8 * 10**6) is not None
    assert pages.plain_chunk(md, 0, 0, record=8) is not None


def test_buffer_pool_takes_back_a_buffer_freed_while_it_is_locked() -> None:
    import threading

    pool = pages.BufferPool()
    view = pool.take(100)

    def free_inside_the_lock() -> None:
        nonlocal view
        with pool._lock:  # a GC pass inside take() runs the finalizer here
            del view

    worker = threading.Thread(target=free_inside_the_lock, daemon=True)
    worker.start()
    worker.join(5)
    assert not worker.is_alive(), "the pool deadlocked on its own lock"
    assert pool.take(100) is not None and pool.allocated == 1


def test_a_failed_allocation_does_not_poison_the_pool() -> None:
    pool = pages.BufferPool()
    with pytest.raises(MemoryError):
        pool.take(2**62)
    assert len(pool.take(1000)) == 1000 and pool.largest == 1000


def test_int8_images_read_raw_keep_their_dtype(tmp_path: Path) -> None:
    src = make_source(tmp_path / "src", rows={"train": 300}, dtype="int8", seed=4)
    raw, lz4 = str(tmp_path / "raw"), str(tmp_path / "lz4")
    ingest(src.root, raw, codec="UNCOMPRESSED", row_group_rows=64)
    ingest(src.root, lz4, row_group_rows=64)
    for threads in (1, 2):
        torch.set_num_threads(threads)
        try:
            for dtype in ("native", "float32"):
                got, want = (_epochs(DeltaIterableDataset(t, split="train", batch_size=50, cache_bytes=0,
                                                          image_dtype=dtype), range(2)) for t in (raw, lz4))
                _same(got, want)
                assert got[0][0]["image"].dtype == (torch.int8 if dtype == "native" else torch.float32)
        finally:
            torch.set_num_threads(2)


def test_a_kept_traceback_does_not_starve_the_next_pass(tables: tuple[str, str]) -> None:
    raw, lz4 = tables
    fail = {"at": -1, "seen": 0}

    def transform(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        fail["seen"] += 1
        if fail["seen"] == fail["at"]:
            raise KeyboardInterrupt
        return batch

    ds = DeltaIterableDataset(raw, split="train", batch_size=32, cache_bytes=0, shuffle=False, transform=transform)
    ref = DeltaIterableDataset(lz4, split="train", batch_size=32, cache_bytes=0, shuffle=False)
    _epochs(ds, range(1))
    kept = []
    for e in (1, 1, 2):
        fail["at"], fail["seen"] = 3, 0
        ds.set_epoch(e)
        try:
            for _ in ds:
                pass
        except KeyboardInterrupt as exc:  # kept, as IPython keeps the last one: its frames live on
            kept.append(exc)
        fail["at"] = -1
        _same(_epochs(ds, [e]), _epochs(ref, [e]))
    assert len(kept) == 3


def test_a_forked_process_makes_its_own_arena(tables: tuple[str, str]) -> None:
    import multiprocessing

    raw, _ = tables
    ds = DeltaIterableDataset(raw, split="train", batch_size=64, cache_bytes=0)
    _epochs(ds, range(2))
    assert ds._slots is not None and ds._slots.decoded == 2 * len(ds.plan.units)
    _FORKED[:] = [ds]  # inherited by the forked child, not pickled (a DataLoader worker's view)
    context = multiprocessing.get_context("fork")
    queue = context.SimpleQueue()
    child = context.Process(target=_child_pass, args=(queue,), daemon=True)
    child.start()
    child.join(60)
    if child.is_alive():
        child.kill()
    assert child.exitcode == 0
    assert queue.get() == len(ds.plan.units)  # a fresh arena: not the parent's, whose slots its threads held


_FORKED: list[DeltaIterableDataset] = []


def _child_pass(queue: object) -> None:
    torch.set_num_threads(1)  # as DataLoader's worker loop: OpenMP's pool does not survive a fork
    ds = _FORKED[0]
    parent = ds._slots
    _epochs(ds, range(2, 3))
    assert ds._slots is not None and ds._slots is not parent
    queue.put(ds._slots.decoded)  # type: ignore[attr-defined]


def test_reads_ahead_always_leave_a_slot_for_each_copy_still_to_come(tables: tuple[str, str]) -> None:
    # A pass can mix raw reads and copies (row groups of another codec, appended by another writer)
    from idxlake.loaders.arena import SPARE_SLOTS, Arena

    raw, _ = tables
    plan = DeltaIterableDataset(raw, split="train", batch_size=64, cache_bytes=0).plan
    live, stride = 3, plan.snapshot.meta.record_nbytes + 4
    arena = Arena(plan, cache=False, slots=live, region=True, spare=SPARE_SLOTS)
    region = arena.region
    assert region is not None and region.slots == live + SPARE_SLOTS

    def copy(unit: int) -> dict[str, torch.Tensor]:
        n = int(plan.unit_rows[unit])
        return {"image": torch.zeros((n, 1, 28, 28), dtype=torch.uint8), "label": torch.zeros(n, dtype=torch.int64)}

    reads = [region.chunk(stride, 4) for _ in range(2 * region.slots)]  # as many reads ahead as threads try
    assert sum(r is not None for r in reads) == SPARE_SLOTS  # the rest of the region stays for the copies
    for u in range(live):
        arena.put(u, copy(u))  # every live unit copied in: each found a slot
    assert arena.copied == live and region.free_slots() == 0
    arena.release(0)
    assert region.chunk(stride, 4) is None  # the released slot waits for the next unit, which may be a copy
    arena.put(3, copy(3))
    del reads  # the reads end: their slots go back to reading
    assert region.chunk(stride, 4) is not None


def test_a_region_with_pinned_slots_is_not_reused_for_a_pass_it_cannot_serve(tables: tuple[str, str]) -> None:
    from idxlake.loaders.arena import SPARE_SLOTS, pass_arena

    raw, _ = tables
    plan = DeltaIterableDataset(raw, split="train", batch_size=64, cache_bytes=0).plan
    arena = pass_arena(plan, None, None, 2, region=True, depth=0)
    assert arena.region is not None and pass_arena(plan, None, arena, 2, region=True) is arena
    stride = plan.snapshot.meta.record_nbytes + 4
    pinned = [arena.region.chunk(stride, 4) for _ in range(SPARE_SLOTS + 1)]  # views an old traceback keeps
    assert sum(p is not None for p in pinned) == SPARE_SLOTS and arena.region.free_slots() == 2
    assert pass_arena(plan, None, arena, 2, region=True) is arena  # the two copies it may need still fit
    arena.region.reserve = 0
    pinned.append(arena.region.chunk(stride, 4))
    fresh = pass_arena(plan, None, arena, 2, region=True)
    assert fresh is not arena and fresh.region is not None and fresh.region.free_slots() == 2 + SPARE_SLOTS


def test_a_footer_placing_a_chunk_before_the_magic_is_left_to_pyarrow() -> None:
    from types import SimpleNamespace as NS

    def meta(offset: int) -> NS:
        column = NS(data_page_offset=offset, total_compressed_size=16, compression="UNCOMPRESSED",
                    physical_type="BYTE_ARRAY", has_dictionary_page=False, encodings=("PLAIN",))
        group = NS(num_rows=1, column=lambda i: column)
        return NS(row_group=lambda i: group, schema=NS(column=lambda i: NS(max_definition_level=0,
                                                                           max_repetition_level=0)))

    assert pages.plain_chunk(meta(4), 0, 0, record=8, file_size=100) is not None
    assert pages.plain_chunk(meta(-8), 0, 0, record=8, file_size=100) is None  # a damaged footer
    assert pages.plain_chunk(meta(0), 0, 0, record=8, file_size=100) is None  # inside the magic


def test_large_pool_buffers_are_private_maps() -> None:
    pool = pages.BufferPool(keep=0)
    buf = pool.take(2 << 20)
    start = buf.ctypes.data
    maps = [line.split() for line in Path("/proc/self/maps").read_text().splitlines()]
    mine = [m for m in maps if int(m[0].split("-")[0], 16) <= start < int(m[0].split("-")[1], 16)]
    assert mine and mine[0][1].endswith("p")  # MAP_PRIVATE: copy-on-write across a fork, not shared memory
