"""Object storage: ingest into, read from and export out of an S3 server on 127.0.0.1 (moto)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from idxlake import ingest
from idxlake.cli import main
from idxlake.pipeline.export import export
from idxlake.schemas import TableNotFoundError, snapshot


def test_ingest_and_read_back_over_s3(s3_endpoint: dict[str, str], synthetic_source, tmp_path: Path) -> None:
    uri = "s3://lake/synthetic"
    result = ingest(synthetic_source.root, uri, storage_options=s3_endpoint, row_group_rows=64)
    assert result.version == 0 and result.rows == {"test": 100, "train": 300}
    assert ingest(synthetic_source.root, uri, storage_options=s3_endpoint).noop
    snap = snapshot(uri, storage_options=s3_endpoint)
    assert all(f.uri.startswith("s3://lake/synthetic/split=") for f in snap.files)
    t = snap.dataset(["train"]).to_table().sort_by("id")
    images = np.frombuffer(b"".join(t["image"].to_pylist()), dtype=np.uint8).reshape(300, 28, 28)
    np.testing.assert_array_equal(images, synthetic_source.arrays["train"][0])
    out = export(uri, tmp_path / "out", storage_options=s3_endpoint)
    assert {d.split for d in out} == {"train", "test"}
    assert gzip.decompress((tmp_path / "out" / "t10k-labels-idx1-ubyte.gz").read_bytes()) == gzip.decompress(
        (synthetic_source.root / "t10k-labels-idx1-ubyte.gz").read_bytes())


def test_cli_storage_options(s3_endpoint: dict[str, str], synthetic_source, capsys: pytest.CaptureFixture) -> None:
    opts = [f"--storage-option={k}={v}" for k, v in s3_endpoint.items()]
    assert main(["ingest", str(synthetic_source.root), "s3://lake/cli", *opts, "--no-progress"]) == 0
    assert "version:  0" in capsys.readouterr().out
    assert main(["export", "s3://lake/missing", "/tmp/x", *opts]) == 2
    assert "no Delta table" in capsys.readouterr().err


def test_missing_s3_table(s3_endpoint: dict[str, str]) -> None:
    with pytest.raises(TableNotFoundError, match=r"s3://lake/nothing-here: "):
        snapshot("s3://lake/nothing-here", storage_options=s3_endpoint)
