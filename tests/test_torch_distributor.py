"""Databricks' launcher for distributed training, TorchDistributor, on local Spark (pyspark from PyPI, Java 17).

``TorchDistributor(num_processes=2, local_mode=True, use_gpu=False).run(train, table, out)``
starts two torchrun processes on the driver; each trains with DDP from the table through our
loader (two DataLoader workers each). The ranks read disjoint rows that cover the split, take
equal numbers of batches, and end with the same weights.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import distributor_train
import pytest
from conftest import SyntheticSource


@pytest.fixture(scope="module")
def spark() -> Iterator[object]:
    """A local SparkSession bound to 127.0.0.1, without its web UI."""
    from pyspark.sql import SparkSession

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPARK_LOCAL_IP", "127.0.0.1")
        session = (SparkSession.builder.master("local[2]").appName("idxlake-test")
                   .config("spark.ui.enabled", "false").config("spark.driver.host", "127.0.0.1")
                   .config("spark.driver.bindAddress", "127.0.0.1").getOrCreate())
        yield session
        session.stop()


@pytest.mark.slow
def test_torch_distributor_trains_from_the_table(spark: object, tmp_path: Path,
                                                 synthetic_table: tuple[str, SyntheticSource]) -> None:
    from pyspark import cloudpickle
    from pyspark.ml.torch.distributor import TorchDistributor

    table, _ = synthetic_table
    cloudpickle.register_pickle_by_value(distributor_train)  # the torchrun processes cannot import tests/
    out = tmp_path / "ranks"
    out.mkdir()
    result = TorchDistributor(num_processes=2, local_mode=True, use_gpu=False).run(
        distributor_train.train, table, str(out))
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert result == {"world_size": 2, "batches": 12, "checksum": ranks[0]["checksum"]}
    first, second = (set(r["ids"]) for r in ranks)
    assert not first & second and first | second == set(range(300))
    assert ranks[0]["batches"] == ranks[1]["batches"] == 2 * 6  # 150 rows per rank, batches of 25
    assert ranks[0]["checksum"] == ranks[1]["checksum"]  # DDP kept the replicas in sync
    assert all(math.isfinite(x) for r in ranks for x in r["losses"])
