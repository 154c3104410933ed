"""A mount without hard links (what Databricks' /Volumes and /dbfs are): a real FUSE passthrough whose link() fails.

Without the single-writer option, ingest refuses in one line that names the way out; with
``allow_unsafe_rename=true`` it commits (with a warning) and every read path works on the mount.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import SyntheticSource
from torch.utils.data import DataLoader

from idxlake import export, info, ingest, query, read_idx
from idxlake.cli import main
from idxlake.loaders import DeltaIterableDataset
from idxlake.schemas import StorageConfigError

HERE = Path(__file__).resolve().parent


@pytest.fixture
def nolink_mount(tmp_path: Path) -> Iterator[Path]:
    """``tmp_path/mnt``: a FUSE passthrough of ``tmp_path/backing`` whose link() fails with ENOSYS."""
    backing, mount = tmp_path / "backing", tmp_path / "mnt"
    backing.mkdir()
    mount.mkdir()
    server = subprocess.Popen([sys.executable, str(HERE / "fuse_nolink.py"), str(backing), str(mount)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while not os.path.ismount(mount):
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise RuntimeError(f"FUSE mount failed (needs /dev/fuse and libfuse2): {server.stderr.read()!r}")
        time.sleep(0.1)
    (mount / "probe").write_bytes(b"x")
    with pytest.raises(OSError):
        os.link(mount / "probe", mount / "probe2")  # the mount really has no hard links
    yield mount
    subprocess.run(["fusermount", "-u", str(mount)], check=False)
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.kill()


@pytest.mark.slow
def test_fuse_mount_single_writer_mode(nolink_mount: Path, synthetic_source: SyntheticSource,
                                       caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> None:
    table = str(nolink_mount / "table")
    with pytest.raises(StorageConfigError, match=r"no hard links.*cloud URI.*allow_unsafe_rename=true"):
        ingest(synthetic_source.root, table, row_group_rows=64)
    assert not list((nolink_mount / "table").rglob("*.parquet")), "the failed attempt's files are removed"

    options = {"allow_unsafe_rename": "true"}
    with caplog.at_level(logging.WARNING):
        assert ingest(synthetic_source.root, table, storage_options=options, row_group_rows=64).version == 0
    assert "single-writer mode" in caplog.text
    # reading needs no option
    assert info(table)["splits"]["train"]["rows"] == 300
    for engine in ("datafusion", "duckdb"):
        assert query(table, "SELECT count(*) AS n FROM t", name="t", engine=engine).table.to_pylist() == [{"n": 400}]
    loader = DataLoader(DeltaIterableDataset(table, split="train", batch_size=100), batch_size=None, num_workers=2)
    assert sorted(i for b in loader for i in b["id"].tolist()) == list(range(300))
    export(table, nolink_mount.parent / "out")
    assert np.array_equal(read_idx(nolink_mount.parent / "out" / "train-labels-idx1-ubyte.gz"),
                          synthetic_source.arrays["train"][1])
    capsys.readouterr()  # drop what earlier output (and earlier tests' log handlers) left
    assert main(["ingest", str(synthetic_source.root), str(nolink_mount / "other"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("idxlake ingest: error:") and len(err.strip().splitlines()) == 1 and "\x1b[" not in err
