"""Ingest under failure: interrupts after the commit, concurrent writers, object-store failures, limits."""

from __future__ import annotations

import gzip
import json
import struct
import subprocess
import sys
import threading
import time
from importlib import import_module
from pathlib import Path

import numpy as np
import pytest
from conftest import make_source
from deltalake import DeltaTable

from idxlake import ingest, optimize
from idxlake.cli import main
from idxlake.pipeline.ingest.prefetch import prefetch
from idxlake.schemas import CommitConflictError, IdxFormatError, SourceError, snapshot


def _parquet(table: str) -> set[str]:
    return {str(p.relative_to(table)) for p in Path(table).rglob("*.parquet")}


def test_interrupt_right_after_the_commit_keeps_the_new_version(
        synthetic_table: tuple[str, object], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    table, _ = synthetic_table
    real = DeltaTable.create_write_transaction

    def commit_then_ctrl_c(self: DeltaTable, *args: object, **kwargs: object) -> None:
        real(self, *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(DeltaTable, "create_write_transaction", commit_then_ctrl_c)
    new = make_source(tmp_path / "new", rows={"test": 30}, seed=5)
    with pytest.raises(KeyboardInterrupt):
        ingest(new.root, table)
    monkeypatch.undo()
    snap = snapshot(table)
    assert snap.version == 1 and snap.meta.splits["test"].rows == 30
    assert snap.dataset(["test"]).to_table().num_rows == 30  # the committed files were not deleted


def test_ingest_racing_optimize_fails_cleanly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = make_source(tmp_path / "src", rows={"train": 200, "test": 40})
    table = str(tmp_path / "t")
    ingest(src.root, table, row_group_rows=32)
    ingest(src.root, table, mode="append", row_group_rows=32, allow_duplicate=True)  # two files per split
    new = make_source(tmp_path / "new", rows={"test": 60}, seed=9)
    ingest_module = import_module("idxlake.pipeline.ingest.job")  # the package exports a function of the same name
    real_write = ingest_module.write_split

    def write_then_optimize(*args: object, **kwargs: object) -> None:
        real_write(*args, **kwargs)
        optimize(table)  # another writer commits while this ingest is in flight

    monkeypatch.setattr(ingest_module, "write_split", write_then_optimize)
    with pytest.raises(CommitConflictError, match=r"another writer committed after version 1 .*run it again"):
        ingest(new.root, table, row_group_rows=32)
    monkeypatch.undo()
    snap = snapshot(table)
    assert snap.version == 2  # the optimize, not the ingest
    test = snap.dataset(["test"]).to_table()
    assert test.num_rows == snap.meta.splits["test"].rows == 80
    assert len(set(test["id"].to_pylist())) == 80  # ids unique: no interleaving of old and new files
    assert set(_parquet(table)) >= {f.path for f in snap.files}
    live_or_old = {f.path for v in range(3) for f in snapshot(table, version=v).files}
    assert _parquet(table) == live_or_old  # the failed ingest left no files behind
    assert ingest(new.root, table, row_group_rows=32).version == 3  # and a rerun succeeds


def test_failed_s3_ingest_leaves_no_object(s3_endpoint: dict[str, str], source_factory) -> None:
    import boto3

    src = source_factory(rows={"train": 100})
    labels = src.root / "train-labels-idx1-ubyte.gz"
    labels.write_bytes(gzip.compress(gzip.decompress(labels.read_bytes())[:70]))
    with pytest.raises(IdxFormatError, match=r"train-labels-idx1-ubyte\.gz: payload is 62 bytes"):
        ingest(src.root, "s3://lake/failed", storage_options=s3_endpoint, row_group_rows=10)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint["AWS_ENDPOINT_URL"], aws_access_key_id="testing",
                      aws_secret_access_key="testing", region_name="us-east-1")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="lake", Prefix="failed/").get("Contents", [])]
    assert not [k for k in keys if k.endswith(".parquet")], keys


def test_prefetch_does_not_hang_when_the_consumer_fails_after_the_producer_finished() -> None:
    done = threading.Event()

    def consume() -> None:
        gen = prefetch(iter([1, 2, 3]), depth=1)
        next(gen)
        time.sleep(0.3)  # producer is now blocked handing over item 2 / "done"
        gen.close()
        done.set()

    threading.Thread(target=consume, daemon=True).start()
    assert done.wait(5), "prefetch deadlocked"


def test_same_content_in_another_container_is_a_noop(tmp_path: Path, synthetic_table: tuple[str, object]) -> None:
    table, source = synthetic_table
    raw = tmp_path / "raw"
    raw.mkdir()
    for gz in source.root.iterdir():
        (raw / gz.name.removesuffix(".gz")).write_bytes(gzip.decompress(gz.read_bytes()))
    assert ingest(raw, table).noop


def test_records_over_2gib_are_refused_before_reading(tmp_path: Path) -> None:
    d = tmp_path / "huge"
    d.mkdir()
    (d / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03" + struct.pack(">3I", 1, 50000, 50000))
    (d / "train-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01" + struct.pack(">I", 1) + b"\x00")
    with pytest.raises(SourceError, match=r"one record is 2500000000 bytes .*up to 2 GiB"):
        ingest(d, str(tmp_path / "t"))


def test_empty_split_metadata_is_strict_json(tmp_path: Path) -> None:
    src = make_source(tmp_path / "s", rows={"train": 10, "test": 0})
    table = str(tmp_path / "t")
    ingest(src.root, table)
    log = (Path(table) / "_delta_log" / "00000000000000000000.json").read_text()
    assert "NaN" not in log
    doc = json.loads(snapshot(table).schema.field("image").metadata[b"idxlake"], parse_constant=pytest.fail)
    assert doc["splits"]["test"]["rows"] == 0 and doc["splits"]["test"]["mean"] is None


@pytest.mark.parametrize("args", [
    ["--storage-option", "novalue"], ["--row-group-rows", "0"], ["--row-group-rows", "-5"],
])
def test_bad_options_are_usage_errors(tmp_path: Path, args: list[str], capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        main(["ingest", str(tmp_path / "t"), *args])
    assert info.value.code == 2
    assert "error: argument" in capsys.readouterr().err


def test_empty_source_path_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        main(["ingest", "", str(tmp_path / "t")])
    assert info.value.code == 2 and "empty path" in capsys.readouterr().err


def test_export_of_a_vacuumed_file_is_a_clear_error(synthetic_table: tuple[str, object], tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    table, _ = synthetic_table
    victim = next(Path(table).rglob("*.parquet"))
    victim.unlink()
    assert main(["export", table, str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and victim.name in err and "of version 0 is missing" in err


PEAK = """
import sys
from idxlake import ingest
ingest(sys.argv[1], sys.argv[2])
print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0])
"""


def _peak_kb(source: Path, table: Path) -> int:
    out = subprocess.run([sys.executable, "-c", PEAK, str(source), str(table)], capture_output=True, text=True,
                         check=True, timeout=300)
    return int(out.stdout.split()[-1])


def test_memory_is_bounded_by_chunks_not_file_size(tmp_path: Path) -> None:
    peaks = {}
    for records in (20_000, 200_000):  # 15.7 MB and 157 MB of images
        d = tmp_path / f"s{records}"
        d.mkdir()
        img = np.random.default_rng(0).integers(0, 256, (20_000, 28, 28), dtype=np.uint8).tobytes()
        with open(d / "train-images-idx3-ubyte", "wb") as f:
            f.write(b"\x00\x00\x08\x03" + struct.pack(">3I", records, 28, 28))
            for _ in range(records // 20_000):
                f.write(img)
        (d / "train-labels-idx1-ubyte").write_bytes(
            b"\x00\x00\x08\x01" + struct.pack(">I", records) + bytes(records))
        peaks[records] = _peak_kb(d, tmp_path / f"t{records}")
    assert peaks[200_000] - peaks[20_000] < 40_000, peaks  # 10x the data, < 40 MB more memory


@pytest.mark.parametrize(("dtype", "value", "match"), [
    ("float32", np.nan, r"train-images-idx3-ubyte.gz: record at row 7 holds a non-finite pixel \(nan\)"),
    ("float64", np.inf, r"record at row 7 holds a non-finite pixel \(inf\)"),
    ("float64", 1e200, r"the squares of the pixels up to row \d+ overflow float64"),
])
def test_float_pixels_that_break_the_statistics_are_refused(tmp_path: Path, dtype: str, value: float,
                                                            match: str) -> None:
    """A NaN pixel ended the whole write in 'ValueError: Out of range float values are not JSON compliant',
    1e200 in 'OverflowError: (34, ...)' (exit 1, no file named)."""
    from idxlake.pipeline.idx.write import write_idx
    from idxlake.schemas import SourceError

    root = tmp_path / "src"
    src = make_source(root, rows={"train": 20}, dtype=dtype)
    images = src.arrays["train"][0].copy()
    images[7, 3, 4] = value
    write_idx(root / "train-images-idx3-ubyte.gz", images)
    table = tmp_path / "t"
    with pytest.raises(SourceError, match=match):
        ingest(root, str(table))
    assert not table.exists()


def test_a_failed_ingest_leaves_no_decode_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The decode thread of a failed split kept polling (holding two chunks) for as long as the exception
    was kept, as notebooks keep ``sys.last_value``: when the labels were truncated, and when the writer
    stopped reading (a storage error mid-file)."""
    import threading

    import idxlake.pipeline.ingest.job as job_module
    from idxlake.schemas import IdxFormatError

    def decoding() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if t.name == "idxlake-decode"}

    before = decoding()
    root = tmp_path / "src"
    make_source(root, rows={"train": 3000}, gz=False)
    labels = root / "train-labels-idx1-ubyte"
    full = labels.read_bytes()
    labels.write_bytes(full[:1000])  # fails at its 16th chunk, the images' thread still busy
    with pytest.raises(IdxFormatError) as kept:
        ingest(root, str(tmp_path / "t"), row_group_rows=64)
    assert kept.value is not None and decoding() == before  # the exception (and its frames) still alive
    labels.write_bytes(full)

    def writer_fails(pending, split, batches, **kwargs):  # type: ignore[no-untyped-def]
        next(iter(batches))
        raise OSError("connection reset by peer")

    monkeypatch.setattr(job_module, "write_split", writer_fails)
    with pytest.raises(OSError, match="connection reset") as kept_too:
        ingest(root, str(tmp_path / "t2"), row_group_rows=64)
    assert kept_too.value is not None and decoding() == before
