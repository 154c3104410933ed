"""SOURCE on any store: IDX files in a bucket are ingested like local ones."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import pytest
from conftest import SyntheticSource

from idxlake import ingest, read_idx, snapshot
from idxlake.cli import main
from idxlake.pipeline.ingest.sources import discover
from idxlake.schemas import SourceError, StorageConfigError, pyarrow_filesystem

STORES = {"s3": ("s3://lake", "s3_endpoint"), "az": ("az://lake", None), "gs": ("gs://lake", "fake_gcs")}


def _options(kind: str, request: pytest.FixtureRequest) -> dict[str, str]:
    if kind == "s3":
        return dict(request.getfixturevalue("s3_endpoint"))
    if kind == "az":
        request.getfixturevalue("azurite")
        return {"use_emulator": "true"}
    return dict(request.getfixturevalue("fake_gcs").options)


def _upload(src: SyntheticSource, uri: str, options: dict[str, str]) -> None:
    fs, path = pyarrow_filesystem(uri, options)
    pafs.copy_files(str(src.root), path, destination_filesystem=fs)
    with fs.open_output_stream(f"{path}/README.txt") as out:  # not an IDX name: ignored
        out.write(b"hello")


@pytest.mark.parametrize("kind", sorted(STORES))
def test_ingest_from_a_bucket(kind: str, request: pytest.FixtureRequest, tmp_path: Path,
                              synthetic_source: SyntheticSource) -> None:
    options = _options(kind, request)
    source = f"{STORES[kind][0]}/src-{uuid.uuid4().hex[:8]}"
    _upload(synthetic_source, source, options)
    table = str(tmp_path / "table")
    result = ingest(source, table, source_storage_options=options, row_group_rows=64)
    assert result.rows == {"test": 100, "train": 300}
    assert result.sources["train"] == ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]
    assert snapshot(table).meta.splits["train"].sources[0].name == "train-images-idx3-ubyte.gz"
    # explicit remote files, and the staged copies are gone once the sources are dropped
    files = [f"{source}/t10k-images-idx3-ubyte.gz", f"{source}/t10k-labels-idx1-ubyte.gz"]
    found = discover(files, storage_options=options)
    staged = found["test"].images
    assert np.array_equal(read_idx(staged), synthetic_source.arrays["test"][0])
    del found
    assert not staged.exists()
    with pytest.raises(SourceError, match=rf"{source}/nothing: no such file or directory"):
        discover(f"{source}/nothing", storage_options=options)


def test_source_on_the_table_store_uses_its_options(s3_endpoint: dict[str, str], tmp_path: Path,
                                                    synthetic_source: SyntheticSource,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    source = f"s3://lake/src-{uuid.uuid4().hex[:8]}"
    _upload(synthetic_source, source, s3_endpoint)
    table = f"s3://lake/t-{uuid.uuid4().hex[:8]}"
    args = [a for k, v in s3_endpoint.items() for a in ("--storage-option", f"{k}={v}")]
    assert main(["ingest", source, table, "--no-progress", *args]) == 0
    assert re.search(r"train +300 rows", capsys.readouterr().out)
    local = str(tmp_path / "local")
    sources = [a for k, v in s3_endpoint.items() for a in ("--source-option", f"{k}={v}")]
    assert main(["ingest", source, local, "--no-progress", "--json", *sources]) == 0
    assert '"rows": 300' in capsys.readouterr().out
    with pytest.raises(StorageConfigError, match="not understood for local"):
        ingest(source, str(tmp_path / "t"), storage_options=s3_endpoint)  # the options are the table's
