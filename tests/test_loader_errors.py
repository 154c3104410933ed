"""Bad use of the loader gets clear idxlake errors."""

from __future__ import annotations

import pyarrow as pa
import pytest

from idxlake.loaders import DeltaIterableDataset
from idxlake.schemas import IdxlakeError, LoaderConfigError, SchemaMismatchError, TableNotFoundError


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(batch_size=0), "batch_size must be an integer >= 1"),
    (dict(batch_size=-3), "batch_size"),
    (dict(batch_size=2.5), "batch_size"),
    (dict(columns=("image", "pixels")), r"unknown column\(s\) \['pixels'\]"),
    (dict(columns=("split",)), "unknown column"),
    (dict(columns=()), "choose distinct columns"),
    (dict(split="validation"), r"split 'validation' has no rows; splits with rows: test \(100 rows\), "
                               r"train \(300 rows\)"),
    (dict(filter="label > 99"), "selection has no rows; the filter matches nothing"),
    (dict(filter="pixels > 3"), "unknown column 'pixels'"),
    (dict(image_dtype="float16"), "image_dtype must be"),
    (dict(shuffle_buffer=-1), "shuffle_buffer"),
    (dict(cache_bytes=-1), "cache_bytes"),
    (dict(rank=1), "both rank and world_size"),
    (dict(rank=2, world_size=2), "rank must be in"),
])
def test_config_errors(synthetic_table, kwargs: dict, match: str) -> None:
    table, _ = synthetic_table
    with pytest.raises(LoaderConfigError, match=match) as info:
        DeltaIterableDataset(table, **kwargs)
    assert isinstance(info.value, IdxlakeError) and isinstance(info.value, ValueError)


def test_missing_table_and_version(tmp_path, synthetic_table) -> None:
    with pytest.raises(TableNotFoundError, match="no Delta table"):
        DeltaIterableDataset(str(tmp_path / "nothing"))
    table, _ = synthetic_table
    with pytest.raises(TableNotFoundError, match="version 42"):
        DeltaIterableDataset(table, version=42)


def test_table_without_the_idxlake_schema(tmp_path) -> None:
    from deltalake import write_deltalake

    other = str(tmp_path / "other")
    write_deltalake(other, pa.table({"x": [1, 2, 3]}))
    with pytest.raises(SchemaMismatchError, match=r"not an idxlake table: missing column\(s\)"):
        DeltaIterableDataset(other)


def test_uint8_output_needs_uint8_images(tmp_path, source_factory) -> None:
    from idxlake import ingest

    src = source_factory("f32", rows={"train": 20}, dtype="float32")
    table = str(tmp_path / "floats")
    ingest(src.root, table)
    with pytest.raises(LoaderConfigError, match="images are float32, not uint8"):
        DeltaIterableDataset(table)
    batch = next(iter(DeltaIterableDataset(table, image_dtype="native", shuffle=False, batch_size=5)))
    assert batch["image"].dtype.is_floating_point and batch["image"].shape == (5, 1, 28, 28)
    normalised = next(iter(DeltaIterableDataset(table, image_dtype="float32", batch_size=20)))
    assert abs(normalised["image"].mean().item()) < 0.05


def test_resume_with_another_world_size_is_refused(synthetic_table) -> None:
    table, _ = synthetic_table
    ds = DeltaIterableDataset(table, split="train", rank=0, world_size=2)
    ds.load_state_dict({"epoch": 0, "start": 1, "yielded": 0, "num_workers": 1, "world_size": 3})
    with pytest.raises(LoaderConfigError, match="world_size=3"):
        list(ds)
