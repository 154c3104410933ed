"""The IDX decoder and writer: round trips over every dtype, and every malformed-input error."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from idxlake.pipeline.idx.header import MAX_PAYLOAD_BYTES, parse_header
from idxlake.pipeline.idx.read import IdxFile, read_idx, scan_idx
from idxlake.pipeline.idx.write import idx_header, write_idx
from idxlake.schemas import IDX_DTYPES, IdxFormatError, IdxlakeError

DTYPES = [d.name for d in IDX_DTYPES.values()]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    array=st.sampled_from(DTYPES).flatmap(lambda dt: hnp.arrays(
        dtype=np.dtype(dt), shape=hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=6),
        elements={"allow_nan": False} if np.dtype(dt).kind == "f" else None)),
    compress=st.booleans(),
    chunk=st.integers(1, 7),
)
def test_round_trip_every_dtype_and_shape(tmp_path: Path, array: np.ndarray, compress: bool, chunk: int) -> None:
    path = tmp_path / ("x.gz" if compress else "x.idx")
    write_idx(path, array, compress=compress)
    with IdxFile(path) as f:
        assert f.header.dtype.name == array.dtype.name
        assert f.header.dims == array.shape
        assert f.compressed is compress
        parts = list(f.chunks(chunk))
        assert all(len(p) <= chunk for p in parts)
        assert all(p.dtype.byteorder in "<=|" for p in parts)  # native little-endian
        back = np.concatenate(parts)
    np.testing.assert_array_equal(back, array)
    assert back.dtype == array.dtype


def test_big_endian_on_disk(tmp_path: Path) -> None:
    write_idx(tmp_path / "a.idx", np.array([1, 256], dtype=np.int16))
    raw = (tmp_path / "a.idx").read_bytes()
    assert raw == b"\x00\x00\x0b\x01" + struct.pack(">I", 2) + b"\x00\x01\x01\x00"
    assert read_idx(tmp_path / "a.idx").tolist() == [1, 256]


def test_compression_detected_from_bytes_not_name(tmp_path: Path) -> None:
    a = np.arange(12, dtype=np.uint8).reshape(3, 4)
    write_idx(tmp_path / "looks-raw-idx2-ubyte", a, compress=True)
    write_idx(tmp_path / "looks-compressed.gz", a, compress=False)
    np.testing.assert_array_equal(read_idx(tmp_path / "looks-raw-idx2-ubyte"), a)
    np.testing.assert_array_equal(read_idx(tmp_path / "looks-compressed.gz"), a)


def test_digest_hashes_uncompressed_bytes(tmp_path: Path) -> None:
    import hashlib

    a = np.arange(100, dtype=np.uint8).reshape(10, 10)
    write_idx(tmp_path / "a.gz", a)
    header, digest = scan_idx(tmp_path / "a.gz")
    content = idx_header("uint8", (10, 10)) + a.tobytes()
    assert digest.sha256 == hashlib.sha256(content).hexdigest()
    assert digest.md5 == hashlib.md5((tmp_path / "a.gz").read_bytes()).hexdigest()
    assert digest.nbytes == len(content) and digest.compressed
    assert header.count == 10


def test_chunks_bound_memory(tmp_path: Path) -> None:
    a = np.zeros((1000, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / "a.gz", a)
    with IdxFile(tmp_path / "a.gz") as f:
        sizes = [c.nbytes for c in f.chunks(chunk_bytes=100 * 784)]
    assert max(sizes) == 100 * 784 and sum(sizes) == a.nbytes


def _raw(tmp_path: Path, data: bytes, name: str = "bad-idx3-ubyte", gz: bool = False) -> Path:
    path = tmp_path / name
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


GOOD_HEADER = b"\x00\x00\x08\x03" + struct.pack(">3I", 2, 2, 2)


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize(("data", "match"), [
    (b"", r"file is empty"),
    (b"\x00\x00", r"header truncated at byte 2"),
    (b"\x12\x34\x08\x01" + b"\x00" * 8, r"bytes 0-1 are 0x1234, expected 0x0000"),
    (b"\x00\x00\x0a\x01" + b"\x00" * 8, r"byte 2: unknown IDX dtype code 0x0a; expected one of 0x08 \(uint8\)"),
    (b"\x00\x00\x08\x00", r"byte 3: ndim is 0"),
    (b"\x00\x00\x08\x03\x00\x00\x00\x02", r"3 dims need 16 header bytes, file has 8"),
    (GOOD_HEADER + b"\x01" * 7, r"payload is 7 bytes, header promises 8 \(2x2x2 uint8\); file truncated\?"),
    (GOOD_HEADER + b"\x01" * 11, r"3 extra bytes from byte offset 24"),
    (b"\x00\x00\x0e\x03" + struct.pack(">3I", 0xFFFFFFFF, 0xFFFFFFFF, 2), r"promise \d+ bytes .*corrupt header"),
    (b"\x00\x00\x08\x02" + struct.pack(">2I", 5, 0), r"record dims \(0,\) contain 0"),
])
def test_malformed_inputs(tmp_path: Path, data: bytes, match: str, gz: bool) -> None:
    path = _raw(tmp_path, data, gz=gz)
    with pytest.raises(IdxFormatError, match=match) as info:
        scan_idx(path)
    assert str(info.value).startswith(path.name)
    assert isinstance(info.value, IdxlakeError) and isinstance(info.value, ValueError)


def test_truncated_gzip(tmp_path: Path) -> None:
    blob = gzip.compress(GOOD_HEADER + bytes(range(8)) * 1000)
    path = _raw(tmp_path, b"", name="t.gz")
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(IdxFormatError, match=r"t.gz: (gzip stream truncated|header truncated|payload is)"):
        scan_idx(path)


def test_corrupt_gzip_crc(tmp_path: Path) -> None:
    blob = bytearray(gzip.compress(GOOD_HEADER + b"\x01" * 8))
    blob[-8] ^= 0xFF  # CRC32 in the trailer
    path = _raw(tmp_path, b"", name="c.gz")
    path.write_bytes(bytes(blob))
    with pytest.raises(IdxFormatError, match=r"c.gz: gzip CRC check failed: member 1 decodes, but its data"):
        scan_idx(path)


def test_corrupt_gzip_body(tmp_path: Path) -> None:
    blob = bytearray(gzip.compress(GOOD_HEADER + bytes(range(256)) * 64))
    blob[30:40] = b"\xff" * 10
    path = _raw(tmp_path, b"", name="body.gz")
    path.write_bytes(bytes(blob))
    with pytest.raises(IdxFormatError, match=r"body.gz: "):
        scan_idx(path)


def test_absurd_dims_rejected_before_reading() -> None:
    head = b"\x00\x00\x08\x04" + struct.pack(">4I", 1 << 20, 1 << 10, 1 << 10, 1 << 10)
    with pytest.raises(IdxFormatError, match=f"> {MAX_PAYLOAD_BYTES}"):
        parse_header(head, "huge")


def test_writer_rejects_unsupported_dtype(tmp_path: Path) -> None:
    with pytest.raises(IdxFormatError, match="cannot be stored in IDX"):
        write_idx(tmp_path / "x", np.zeros(3, dtype=np.uint16))


def test_stdlib_gzip_fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import idxlake.pipeline.idx.read as idx

    monkeypatch.setattr(idx, "_gzip_impl", gzip)
    a = np.arange(60, dtype=np.int32).reshape(5, 3, 4)
    write_idx(tmp_path / "a.gz", a)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), a)
    blob = bytearray((tmp_path / "a.gz").read_bytes())
    blob[-8] ^= 0xFF
    (tmp_path / "a.gz").write_bytes(bytes(blob))
    with pytest.raises(IdxFormatError, match=r"a.gz: gzip CRC check failed: member 1 decodes"):
        scan_idx(tmp_path / "a.gz")


def test_gzip_failures_say_where_and_what(tmp_path: Path) -> None:
    """Trailing bytes after a complete stream were called truncation ("re-download"), a cut was reported
    millions of bytes early, and a 3-byte file said "names compression method 8, expected 8"."""
    body = gzip.compress(GOOD_HEADER + bytes(range(256)) * 64, mtime=0)
    cases = {
        "junk.gz": (body + b"JUNKJUNK", r"junk.gz: 8 trailing bytes after the end of the gzip stream \(at compressed "
                                        rf"byte {len(body)}, after {len(GOOD_HEADER) + 256 * 64} uncompressed bytes "
                                        r"in 1 member\(s\)\).*strip the trailing bytes or re-download"),
        "cut.gz": (body[:len(body) // 2], rf"cut.gz: gzip stream truncated at compressed byte {len(body) // 2}, "
                                          r"after \d+ uncompressed bytes"),
        "tiny.gz": (b"\x1f\x8b\x08", r"tiny.gz: file is 3 bytes, shorter than a gzip header"),
    }
    for name, (blob, match) in cases.items():
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(IdxFormatError, match=match):
            scan_idx(tmp_path / name)
    two = tmp_path / "two.gz"  # a second member is fine: gzip -t and idxlake both read it
    two.write_bytes(gzip.compress(GOOD_HEADER[:10]) + gzip.compress(GOOD_HEADER[10:] + b"\x01" * 8))
    assert scan_idx(two)[1].nbytes == len(GOOD_HEADER) + 8


def test_a_bomb_of_trailing_bytes_is_not_read_to_its_end(tmp_path: Path) -> None:
    import time

    path = tmp_path / "bomb.gz"
    with gzip.open(path, "wb", compresslevel=1) as fh:
        fh.write(GOOD_HEADER + b"\x01" * 8)
        for _ in range(256):
            fh.write(bytes(4 << 20))  # 1 GiB of zeros after the payload
    started = time.monotonic()
    with pytest.raises(IdxFormatError, match=r"at least \d+ extra bytes from byte offset"):
        scan_idx(path)
    assert time.monotonic() - started < 2


def test_a_truncated_file_never_allocates_the_record_its_header_promises(tmp_path: Path) -> None:
    """A header of one 2^20 x 2^20 uint8 record (1 TiB) and 10 bytes of payload raised
    ``MemoryError: Unable to allocate 1.00 TiB`` in read_idx / scan_idx (not an idxlake error)."""
    path = tmp_path / "huge-images-idx3-ubyte"
    path.write_bytes(b"\x00\x00\x08\x03" + struct.pack(">3I", 1, 1 << 20, 1 << 20) + bytes(10))
    for call in (read_idx, scan_idx):
        with pytest.raises(IdxFormatError, match=r"payload is 10 bytes, header promises 1099511627776"):
            call(path)
    big = tmp_path / "big-images-idx3-ubyte"  # a record larger than a chunk, complete: read whole
    record = np.arange(3 * 64 * 64, dtype=np.uint8).reshape(3, 64, 64)
    big.write_bytes(b"\x00\x00\x08\x03" + struct.pack(">3I", 3, 64, 64) + record.tobytes())
    with IdxFile(big) as f:
        parts = list(f.chunks(chunk_bytes=1000))
    assert [p.shape for p in parts] == [(1, 64, 64)] * 3 and np.array_equal(np.concatenate(parts), record)
