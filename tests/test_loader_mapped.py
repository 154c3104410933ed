"""Local uncompressed tables mapped into the arena (``loaders/mapped.py``): the batches pyarrow gives, from
several files in one address range, no record copied, every page's CRC checked again each pass, and the
slots taking over wherever a file cannot be mapped."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from batches import assert_same, epochs_of
from conftest import make_source
from test_loader_rawpages import (  # noqa: F401 (fixture)  # collected here too: with local files mapped
    tables,
    test_a_flipped_bit_in_a_raw_page_names_file_row_group_and_byte,
    test_a_record_of_the_wrong_length_is_a_schema_mismatch,
)

from idxlake import DataCorruptionError, DeltaIterableDataset, ingest
from idxlake.loaders import arena as arenas
from idxlake.loaders import mapped, mounts, pages
from idxlake.loaders.decode import UnitReader
from idxlake.schemas import snapshot

pytestmark = pytest.mark.skipif(mapped._MMAP is None, reason="memory maps of local files are Linux-only")


@pytest.fixture
def raw(tmp_path: Path) -> str:
    """An UNCOMPRESSED table of two train files (ids 0-499 and 500-999; row groups of 96 and 64 rows)."""
    src = make_source(tmp_path / "src", rows={"train": 500, "test": 40}, seed=8)
    table = str(tmp_path / "raw")
    ingest(src.root, table, codec="UNCOMPRESSED", row_group_rows=96)
    ingest(src.root, table, codec="UNCOMPRESSED", row_group_rows=64, mode="append", allow_duplicate=True)
    return table


def _pyarrow(table: str, epochs: range, **options: object) -> list[list[dict[str, torch.Tensor]]]:
    return epochs_of(DeltaIterableDataset(table, split="train", **options), epochs, raw_pages=False)


@pytest.mark.parametrize("options", [
    {"cache_bytes": 0},
    {"cache_bytes": 0, "prefetch_depth": 1},
    {"cache_bytes": 0, "prefetch": False},
    {"cache_bytes": 0, "shuffle": False, "batch_size": 100},
    {"cache_bytes": 0, "filter": "id IN (1, 2, 5, 7, 100, 101, 102, 103, 300, 450) OR label = 3"},
    {"cache_bytes": 0, "drop_last": True, "columns": ("image",)},
    {"cache_bytes": 0, "rank": 1, "world_size": 3},
])
def test_mapped_reads_give_the_batches_pyarrow_gives(raw: str, options: dict) -> None:
    options = {"batch_size": 64, "seed": 5, **options}
    ds = DeltaIterableDataset(raw, split="train", **options)
    assert_same(epochs_of(ds, range(4)), _pyarrow(raw, range(4), **options))
    space = ds._slots.region.space
    assert space is not None and sorted(space.mapped) == [0, 1]  # both train files, in one range
    if "filter" not in options:
        assert ds._slots.copied == 0  # every record served from the file's pages: none copied
    else:  # a row selection is gathered out of the mapped chunk into a slot
        assert ds._slots.copied == ds._slots.decoded > 0


def test_batches_mix_records_of_both_mapped_files(raw: str) -> None:
    ds = DeltaIterableDataset(raw, split="train", batch_size=250, seed=1, cache_bytes=0)
    ds.set_epoch(0)
    batches = list(ds)
    ids = batches[0]["id"]  # the first file holds ids 0-499, the second 500-999
    assert len(ids) == 250 and (ids < 500).any() and (ids >= 500).any()
    assert sorted(torch.cat([b["id"] for b in batches]).tolist()) == list(range(1000))
    assert sorted(ds._slots.region.space.mapped) == [0, 1] and ds._slots.copied == 0


def test_files_stay_mapped_and_are_verified_again_each_pass(raw: str) -> None:
    ds = DeltaIterableDataset(raw, split="train", batch_size=64, cache_bytes=0)
    epochs_of(ds, range(2))
    arena = ds._slots
    space = arena.region.space
    mapped_before = dict(space.mapped)
    assert sorted(mapped_before) == [0, 1]
    path = Path(raw) / next(f for f in snapshot(raw).files if f.split == "train").path
    col = pq.ParquetFile(path).metadata.row_group(1).column(2)
    at = col.data_page_offset + col.total_compressed_size - 500  # inside row group 1's records
    with open(path, "r+b") as fh:  # in place, as damage would: the mapping sees the file's pages
        fh.seek(at)
        old = fh.read(1)
        fh.seek(at)
        fh.write(bytes([old[0] ^ 0x10]))
    with pytest.raises(DataCorruptionError, match=r"row group 1.*CRC-32"):  # epoch 2's first reads ran ahead
        epochs_of(ds, range(2, 4))
    assert ds._slots is arena and arena.region.space is space
    assert space.mapped == mapped_before  # mapped once, read again: the CRC is checked on every pass


def test_a_file_that_cannot_be_mapped_is_read_into_the_slots(raw: str, monkeypatch: pytest.MonkeyPatch) -> None:
    real = mapped._MMAP
    monkeypatch.setattr(mapped, "_MMAP", lambda addr, size, prot, flags, fd, offset:  # a file's mmap(2) fails
                        -1 if fd >= 0 else real(addr, size, prot, flags, fd, offset))
    ds = DeltaIterableDataset(raw, split="train", batch_size=64, seed=2, cache_bytes=0)
    assert_same(epochs_of(ds, range(3)), _pyarrow(raw, range(3), batch_size=64, seed=2, cache_bytes=0))
    space = ds._slots.region.space
    assert space is not None and not space.mapped and space.failed == {0, 1}
    assert ds._slots.copied < ds._slots.decoded  # later reads landed in the slots, as on object storage


def test_no_address_space_falls_back_to_plain_slots(raw: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mapped, "MAX_SPACE", 1)
    ds = DeltaIterableDataset(raw, split="train", batch_size=64, seed=3, cache_bytes=0)
    assert_same(epochs_of(ds, range(2)), _pyarrow(raw, range(2), batch_size=64, seed=3, cache_bytes=0))
    assert ds._slots.region is not None and ds._slots.region.space is None


def test_map_local_files_off_reads_into_slots(raw: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mapped, "MAP_LOCAL_FILES", False)
    ds = DeltaIterableDataset(raw, split="train", batch_size=64, cache_bytes=0)
    epochs_of(ds, range(1))
    assert ds._slots.region is not None and ds._slots.region.space is None


def test_mapped_reads_under_dataloader_workers(raw: str) -> None:
    got = {}
    for raw_pages in (True, False):  # forked workers map the files themselves; the reference reads pyarrow
        before, pages.RAW_PAGES = pages.RAW_PAGES, raw_pages
        try:
            loader = DeltaIterableDataset(raw, split="train", batch_size=50, cache_bytes=0).dataloader(num_workers=2)
            got[raw_pages] = [[{k: v.clone() for k, v in b.items()} for b in loader] for _ in range(2)]
        finally:
            pages.RAW_PAGES = before
    assert_same(got[True], got[False])
    assert sorted(torch.cat([b["id"] for b in got[True][0]]).tolist()) == list(range(1000))


def test_a_file_shorter_than_its_chunk_says_truncated(raw: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mapped, "MAP_LOCAL_FILES", False)
    ds = DeltaIterableDataset(raw, split="train", batch_size=64, cache_bytes=0)
    epochs_of(ds, range(1))  # the reader knows each unit's chunk now
    reader: UnitReader = ds._reader
    unit = next(u for u in ds.plan.units if u.file == 0 and u.row_group == 1)
    path = Path(ds.plan.snapshot.file_path(ds.plan.files[0]))
    col = pq.ParquetFile(path).metadata.row_group(1).column(2)
    os.truncate(path, col.data_page_offset + 1000)  # before it is mapped: mapped, it would be SIGBUS
    monkeypatch.setattr(mapped, "MAP_LOCAL_FILES", True)
    region = arenas.Region(2, 200, 784, (mapped.local_paths(ds.plan), [f.size for f in ds.plan.files]))
    assert region.space is not None
    with pytest.raises(DataCorruptionError, match=r"row group 1.*of its \d+ bytes; file truncated\?"):
        reader.read(unit, region)


def test_byte_offsets_address_slot_and_file_records_alike(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    data = np.arange(3 * mapped.PAGE + 123, dtype=np.uint64).astype(np.uint8)
    path.write_bytes(data.tobytes())
    region = arenas.Region(2, 3, 4, ([str(path)], [len(data)]))
    space = region.space
    assert space is not None and space.file(0) == len(data) and space.file(0) == len(data)  # once
    records = np.ndarray((5, 4), np.uint8, space.view(0, 10, 40), 0, (8, 1))  # stride record + 4
    rows = region.image_rows((4,))
    at = region.byte(torch.from_numpy(records))
    expected = torch.from_numpy(data[10:50].reshape(5, 8)[:, :4])
    assert at is not None and torch.equal(rows[at + 8 * torch.arange(5)], expected)
    region.records[3] = [9, 8, 7, 6]  # a slot's record: byte row * stride + 4
    assert region.byte(torch.from_numpy(region.records[3:4])) == 3 * 8 + 4
    assert rows[3 * 8 + 4].tolist() == [9, 8, 7, 6]
    with pytest.raises(ValueError, match="outside"):
        space.view(0, len(data) - 4, 8)
    assert region.byte(torch.from_numpy(records.copy())) is None  # elsewhere in memory: copied in


def test_an_arena_is_reused_by_a_pass_needing_more_slots(raw: str) -> None:
    ds = DeltaIterableDataset(raw, split="train", batch_size=64, cache_bytes=0)
    epochs_of(ds, range(1))
    arena, plan = ds._slots, ds.plan
    assert arena is not None and arena.region.space is not None
    space = arena.region.space
    again = arenas.pass_arena(plan, None, arena, arena.live + 1, region=True, depth=ds.prefetch_depth)
    assert again is arena and again.region.space is space  # the headroom: the files stay mapped


def test_only_mapped_file_bytes_and_slot_rows_count_as_the_arena(tmp_path: Path) -> None:
    files = [tmp_path / "a.bin", tmp_path / "b.bin", tmp_path / "big.bin"]
    for f, n in zip(files, (5000, 7000, 9000), strict=True):
        f.write_bytes(bytes(n))
    region = arenas.Region(2, 3, 4, ([str(f) for f in files], [5000, 7000, 100]))
    space = region.space
    assert space is not None and space.file(0) == 5000
    assert space.file(2) is None and 2 in space.failed  # larger than its recorded size: read instead
    inside = np.ndarray((3, 4), np.uint8, space.bytes, int(space.starts[1]) + 8, (8, 1))  # b.bin: not mapped
    assert region.byte(torch.from_numpy(inside)) is None
    near_end = np.ndarray((2, 4), np.uint8, space.bytes, int(space.starts[0]) + 4990, (8, 1))  # past a.bin's end
    assert region.byte(torch.from_numpy(near_end)) is None
    ok = np.ndarray((2, 4), np.uint8, space.view(0, 100, 12), 0, (8, 1))
    assert region.byte(torch.from_numpy(ok)) == int(space.starts[0]) + 100


def test_files_on_network_or_fuse_filesystems_are_not_mapped(raw: str, monkeypatch: pytest.MonkeyPatch) -> None:
    table = mounts.mount_table("/dev/vda / ext4 rw 0 0\nfuse /dbfs fuse.dbfs rw 0 0\n"
                               "srv:/x /mnt/my\\040data nfs4 rw 0 0\ntmpfs /mnt/my\\040data/ram tmpfs rw 0 0\n")
    assert table[2] == ("/mnt/my data", "nfs4")
    assert mounts.fs_type("/dbfs/tables/t", table) == "fuse.dbfs" and mounts.fs_type("/dbfsx", table) == "ext4"
    assert mounts.fs_type("/mnt/my data/t", table) == "nfs4" and mounts.fs_type("/mnt/my data/ram/t", table) == "tmpfs"
    assert mounts.mappable([raw])  # this test's tmp_path is on a local disk
    monkeypatch.setattr(mounts, "MAPPABLE", frozenset())  # as if it were on NFS
    ds = DeltaIterableDataset(raw, split="train", batch_size=64, cache_bytes=0)
    epochs_of(ds, range(1))
    assert ds._slots.region is not None and ds._slots.region.space is None  # read into slots


def test_forked_workers_of_a_dataset_that_mapped_its_files(raw: str) -> None:
    ds = DeltaIterableDataset(raw, split="train", batch_size=50, cache_bytes=0)
    main = epochs_of(ds, range(1))  # the parent's arena maps both files before the workers fork
    assert ds._slots.region.space is not None and ds._slots.region.space.mapped
    ds.set_epoch(0)
    got = [{k: v.clone() for k, v in b.items()} for b in ds.dataloader(num_workers=2)]
    assert sorted(torch.cat([b["id"] for b in got]).tolist()) == sorted(torch.cat([b["id"] for b in main[0]]).tolist())
    by_id = {int(i): img for b in main[0] for i, img in zip(b["id"], b["image"], strict=True)}
    assert all(torch.equal(img, by_id[int(i)]) for b in got for i, img in zip(b["id"], b["image"], strict=True))
