"""Real ``torchrun --nproc_per_node=2`` runs (gloo on CPU): disjoint coverage, equal batches, DDP training."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("loader_ddp_script.py")


def torchrun(*args: str, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_torchrun_two_ranks_cover_the_split_once(synthetic_table, tmp_path) -> None:
    table, _ = synthetic_table
    out = tmp_path / "ranks"
    out.mkdir()
    proc = torchrun(str(SCRIPT), table, str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0]["batches"] == ranks[1]["batches"] == ranks[0]["len"] == 5  # ceil(300 / (32 * 2))
    assert not set(ranks[0]["ids"]) & set(ranks[1]["ids"])
    assert sorted(ranks[0]["ids"] + ranks[1]["ids"]) == list(range(300))
    assert ranks[0]["same_when_spawned"] and ranks[1]["same_when_spawned"]  # dataset made before init


@pytest.mark.slow
def test_torchrun_two_ranks_two_workers_each_consumer_reads_its_share(tmp_path, source_factory) -> None:
    from collections import Counter

    from idxlake import ingest

    src = source_factory("ddp_lanes", rows={"train": 4800, "test": 10}, seed=3)
    table = str(tmp_path / "ddp_lanes")
    ingest(src.root, table, row_group_rows=16)  # 300 row groups
    out = tmp_path / "reads"
    out.mkdir()
    proc = torchrun(str(SCRIPT), table, str(out), "reads", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["batches"] == ranks[1]["batches"]
    assert sorted(ranks[0]["ids"] + ranks[1]["ids"]) == list(range(4800))
    per_consumer: Counter = Counter()
    for r in range(2):
        lines = (out / f"reads{r}.log").read_text().splitlines()
        per_consumer.update(f"{r}/{line.split()[0]}" for line in lines)
    assert len(per_consumer) == 4  # two forked workers per rank did all the decoding
    # a quarter of the 300 row groups each, plus lane ends and the tail (see test_loader_lanes.py)
    assert max(per_consumer.values()) <= 300 / 4 + 4 + 64, per_consumer
    assert sum(per_consumer.values()) <= 1.1 * 300, per_consumer


@pytest.mark.slow
def test_idxlake_train_under_torchrun(mnist_table, tmp_path) -> None:
    proc = torchrun("-m", "idxlake", "train", mnist_table, "--epochs", "1", "--limit", "2048",
                    "--batch-size", "64", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert any(line.startswith("epoch 1: loss ") and line.endswith("samples/s") for line in lines), lines
    assert "2 rank(s)" in proc.stdout
    accuracy = [line for line in lines if line.startswith("test accuracy: ")]
    assert len(accuracy) == 1  # rank 0 only
    assert float(accuracy[0].split(": ")[1]) > 0.5
