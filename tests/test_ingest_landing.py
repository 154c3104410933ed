"""Ingest reports the truth: a commit that landed despite an error, duplicate appends, damaged sources first,
gzip header flags as ``gzip -t`` sees them, read-only targets, concurrency losers exit 1."""

from __future__ import annotations

import gzip
import logging
import shutil
import subprocess
from importlib import import_module
from pathlib import Path

import pytest
from conftest import make_source
from deltalake import DeltaTable

from idxlake import ingest
from idxlake.cli import main
from idxlake.pipeline.idx.read import scan_idx
from idxlake.pipeline.ingest.landing import TXN_KEY
from idxlake.schemas import CommitUncertainError, IdxFormatError, SourceError, snapshot

job = import_module("idxlake.pipeline.ingest.job")


def _parquet(table: str) -> set[str]:
    return {str(p.relative_to(table)) for p in Path(table).rglob("*.parquet")}


def _commit_then_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    real = DeltaTable.create_write_transaction

    def landed_then_connection_died(self: DeltaTable, *args: object, **kwargs: object) -> None:
        real(self, *args, **kwargs)
        raise OSError("Generic S3 error: connection reset by peer")

    monkeypatch.setattr(DeltaTable, "create_write_transaction", landed_then_connection_died)


def test_error_after_the_commit_landed_is_success_with_a_warning(
        synthetic_table, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    table, _ = synthetic_table
    _commit_then_fail(monkeypatch)
    new = make_source(tmp_path / "new", rows={"test": 30}, seed=5)
    assert main(["ingest", str(new.root), table, "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "version:  1 (mode replace)" in captured.out
    assert "the commit landed as version 1 although the call reported an error (OSError" in captured.err
    monkeypatch.undo()
    snap = snapshot(table)
    assert snap.meta.splits["test"].rows == 30 and snap.dataset(["test"]).to_table().num_rows == 30
    assert DeltaTable(table).history(1)[0][TXN_KEY]  # the transaction id is in the commit
    # rerunning the same ingest as an append is refused: it would duplicate the rows
    assert main(["ingest", str(new.root), table, "--mode", "append", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "split 'test' already holds t10k-images-idx3-ubyte.gz" in err
    assert snapshot(table).version == 1


def test_error_before_the_commit_is_a_failure_and_leaves_nothing(
        synthetic_table, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    table, _ = synthetic_table
    before = _parquet(table)

    def fail(self: DeltaTable, *args: object, **kwargs: object) -> None:
        raise OSError("Generic S3 error: connection refused")

    monkeypatch.setattr(DeltaTable, "create_write_transaction", fail)
    with pytest.raises(OSError, match="connection refused"):
        ingest(make_source(tmp_path / "new", rows={"test": 30}, seed=5).root, table)
    assert snapshot(table).version == 0 and _parquet(table) == before


def test_when_the_log_cannot_be_read_the_outcome_is_reported_unknown_and_files_kept(
        synthetic_table, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    table, _ = synthetic_table
    _commit_then_fail(monkeypatch)
    landing = import_module("idxlake.pipeline.ingest.landing")

    def unreachable(*args: object, **kwargs: object) -> None:
        raise OSError("endpoint unreachable")

    monkeypatch.setattr(landing, "open_table", unreachable)
    monkeypatch.setattr(landing.time, "sleep", lambda s: None)
    assert main(["ingest", str(make_source(tmp_path / "new", rows={"test": 30}, seed=5).root), table,
                 "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "the commit was attempted but the log cannot be read to learn whether it landed" in err
    assert "look for transaction" in err
    monkeypatch.undo()
    snap = snapshot(table)
    assert snap.version == 1 and snap.dataset(["test"]).to_table().num_rows == 30  # files kept: it had landed
    assert issubclass(CommitUncertainError, RuntimeError)  # hence exit 1


def test_s3_commit_that_landed_before_the_connection_died(
        s3_endpoint: dict[str, str], source_factory, monkeypatch: pytest.MonkeyPatch) -> None:
    uri = "s3://lake/landed"
    ingest(source_factory("a", rows={"train": 40, "test": 10}).root, uri, storage_options=s3_endpoint)
    _commit_then_fail(monkeypatch)
    result = ingest(source_factory("b", rows={"test": 20}, seed=3).root, uri, storage_options=s3_endpoint)
    monkeypatch.undo()
    snap = snapshot(uri, storage_options=s3_endpoint)
    assert result.version == snap.version == 1
    assert snap.dataset(["test"]).to_table().num_rows == 20


def test_append_of_the_same_content_in_another_container_is_refused_after_the_scan(
        synthetic_table, tmp_path: Path) -> None:
    table, source = synthetic_table
    raw = tmp_path / "raw"
    raw.mkdir()
    for gz in source.root.iterdir():  # md5 of the stored file differs; the uncompressed sha256 is the same
        (raw / gz.name.removesuffix(".gz")).write_bytes(gzip.decompress(gz.read_bytes()))
    before = _parquet(table)
    with pytest.raises(SourceError, match=r"split '(test|train)' already holds .*--allow-duplicate"):
        ingest(raw, table, mode="append")
    assert _parquet(table) == before and snapshot(table).version == 0
    assert ingest(raw, table, mode="append", allow_duplicate=True).rows == {"test": 100, "train": 300}


def test_damaged_sources_are_reported_before_a_table_mismatch(synthetic_table, tmp_path: Path) -> None:
    table, _ = synthetic_table  # 28x28
    other = make_source(tmp_path / "other", rows={"train": 50}, shape=(14, 14))
    images = other.root / "train-images-idx3-ubyte.gz"
    images.write_bytes(images.read_bytes()[:-40])  # truncated, and a different shape
    with pytest.raises(IdxFormatError, match=r"train-images-idx3-ubyte\.gz: gzip stream truncated"):
        ingest(other.root, table)
    intact = make_source(tmp_path / "intact", rows={"train": 50}, shape=(14, 14))
    with pytest.raises(Exception, match=r"table holds shape \(28, 28\)"):
        ingest(intact.root, table)


@pytest.mark.parametrize("flags,ok", [(0x01, True), (0x02, True), (0x04, True), (0x08, True), (0x10, True),
                                      (0x20, False), (0x40, False), (0x80, False)])
def test_gzip_header_flags_accepted_exactly_as_gzip_t_does(tmp_path: Path, flags: int, ok: bool) -> None:
    body = gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x03\x01\x02\x03", mtime=0)
    extra = {0x02: None, 0x04: b"\x04\x00abcd", 0x08: b"name\x00", 0x10: b"comment\x00"}.get(flags, b"")
    head = bytearray(body[:10])
    head[3] = flags
    if flags == 0x02:  # FHCRC: CRC16 of the header (low 16 bits of its CRC32)
        import zlib
        extra = (zlib.crc32(bytes(head)) & 0xFFFF).to_bytes(2, "little")
    path = tmp_path / "f-labels-idx1-ubyte.gz"
    path.write_bytes(bytes(head) + (extra or b"") + body[10:])
    if shutil.which("gzip"):  # the oracle itself
        assert (subprocess.run(["gzip", "-t", str(path)], capture_output=True).returncode == 0) == ok
    if ok:
        assert scan_idx(path)[0].count == 3
    else:
        with pytest.raises(IdxFormatError, match=rf"reserved flag bits set \(FLG=0x{flags:02x}\).*gzip -t"):
            scan_idx(path)


def test_read_only_destination_gives_no_spurious_warning(
        tmp_path: Path, synthetic_source, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    real = job.open_pending

    def read_only(table: str, options: object) -> object:
        pending = real(table, options)

        def refuse(path: str, *args: object, **kwargs: object) -> None:
            raise PermissionError(f"[Errno 13] Permission denied: {path!r}")

        pending.fs = _Wrapped(pending.fs, refuse)
        return pending

    monkeypatch.setattr(job, "open_pending", read_only)
    with caplog.at_level(logging.WARNING), pytest.raises(PermissionError, match="Permission denied"):
        ingest(synthetic_source.root, str(tmp_path / "t"))
    assert not [r for r in caplog.records if "could not remove" in r.getMessage()]


class _Wrapped:
    """A filesystem whose ``open_output_stream`` is refused (a read-only destination, also for root)."""

    def __init__(self, fs: object, refuse: object) -> None:
        self._fs, self.open_output_stream = fs, refuse

    def __getattr__(self, name: str) -> object:
        return getattr(self._fs, name)


def test_losing_a_create_race_exits_1_like_every_concurrency_loser(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import deltalake.transaction as txn

    table = str(tmp_path / "t")
    real = txn.create_table_with_add_actions
    first = make_source(tmp_path / "first", rows={"train": 20}, seed=1)

    def other_writer_first(*args: object, **kwargs: object) -> None:
        monkeypatch.setattr(txn, "create_table_with_add_actions", real)
        ingest(first.root, table)  # another writer creates the table meanwhile
        real(*args, **kwargs)

    monkeypatch.setattr(txn, "create_table_with_add_actions", other_writer_first)
    second = make_source(tmp_path / "second", rows={"train": 30}, seed=2)
    assert main(["ingest", str(second.root), table, "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "another writer created the table meanwhile; nothing was written" in err
    snap = snapshot(table)
    assert snap.version == 0 and snap.meta.splits["train"].rows == 20
    assert _parquet(table) == {f.path for f in snap.files}  # the loser's files are gone
