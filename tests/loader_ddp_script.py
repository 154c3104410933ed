"""Run under ``torchrun --nproc_per_node=2`` by tests/test_loader_ddp.py (not collected by pytest).

Each rank streams one epoch with auto-detected rank/world size and one DataLoader worker,
all-reduces after every batch (unequal batch counts would hang here), and writes the ids
it saw to ``OUT/rank{R}.json``.

Usage: script.py TABLE OUT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from loaders import DeltaIterableDataset


def main(table: str, out: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    ds = DeltaIterableDataset(table, split="train", batch_size=32, seed=1, shuffle_buffer=100)
    ds.set_epoch(1)
    ids: list[int] = []
    batches = 0
    for batch in DataLoader(ds, batch_size=None, num_workers=1):
        count = torch.tensor([len(batch["id"])])
        dist.all_reduce(count)
        ids += batch["id"].tolist()
        batches += 1
    dist.barrier()
    Path(out, f"rank{rank}.json").write_text(json.dumps(
        {"rank": rank, "world_size": dist.get_world_size(), "batches": batches, "len": len(ds), "ids": ids}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
