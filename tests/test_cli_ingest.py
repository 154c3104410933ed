"""The ``idxlake ingest``/``export`` commands: summaries, exit codes, one-line errors."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import pytest

from idxlake.cli import main


def test_ingest_bundled_mnist_prints_summary(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["ingest", str(tmp_path / "t"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "dataset:  mnist\n" in out
    assert "sources: match the published hashes; split train at this version: verified official data" in out
    assert "train     60,000 rows  from train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz" in out
    assert "version:  0 (mode replace)" in out and "MB/s" in out
    assert main(["ingest", str(tmp_path / "t")]) == 0
    assert "version:  0 (unchanged: the table already holds these sources)" in capsys.readouterr().out


def test_bad_input_exits_2_with_one_line(tmp_path: Path, synthetic_source, capsys: pytest.CaptureFixture) -> None:
    path = synthetic_source.root / "train-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x01\x2c" + b"\x01" * 10))
    assert main(["ingest", str(synthetic_source.root), str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("idxlake ingest: error: train-labels-idx1-ubyte.gz: payload is 10 bytes, header "
                          "promises 300 (300 uint8); file truncated?")


def test_debug_shows_traceback(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["--debug", "ingest", str(tmp_path / "nothing"), str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "no such file or directory" in err


def test_mode_error_and_export(tmp_path: Path, synthetic_source, capsys: pytest.CaptureFixture) -> None:
    table = str(tmp_path / "t")
    assert main(["ingest", str(synthetic_source.root), table, "--mode", "error", "--codec", "ZSTD"]) == 0
    assert main(["ingest", str(synthetic_source.root), table, "--mode", "error"]) == 2
    assert "table exists (version 0) and --mode error was given" in capsys.readouterr().err
    assert main(["export", table, str(tmp_path / "out"), "--split", "test", "--raw"]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["t10k-images-idx3-ubyte",
                                                                     "t10k-labels-idx1-ubyte"]
    assert (tmp_path / "out" / "t10k-labels-idx1-ubyte").read_bytes() == gzip.decompress(
        (synthetic_source.root / "t10k-labels-idx1-ubyte.gz").read_bytes())


def test_usage_error_exits_2(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        main(["ingest", "a", "b", "--mode", "sideways"])
    assert info.value.code == 2


def test_python_m_pipeline_end_to_end(tmp_path: Path, synthetic_source) -> None:
    (synthetic_source.root / "t10k-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    proc = subprocess.run([sys.executable, "-m", "idxlake", "ingest", str(synthetic_source.root),
                           str(tmp_path / "t")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(
        "idxlake ingest: error: t10k-images-idx3-ubyte.gz: gzip stream")
    assert not (tmp_path / "t").exists()


def test_environment_failures_exit_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture) -> None:
    from importlib import import_module

    from idxlake.schemas import CommitConflictError

    def conflict(*args: object, **kwargs: object) -> None:
        raise CommitConflictError("t: another writer committed after version 3 while this one was running")

    monkeypatch.setattr(import_module("idxlake.pipeline.ingest.job"), "ingest", conflict)
    assert main(["ingest", str(tmp_path / "t")]) == 1
    err = capsys.readouterr().err
    assert err == "idxlake ingest: error: t: another writer committed after version 3 while this one was running\n"
