"""Run under ``torchrun --nproc_per_node=2`` by tests/test_loader_ddp.py (not collected by pytest).

Each rank streams one epoch with auto-detected rank/world size and one DataLoader worker,
all-reduces after every batch (unequal batch counts would hang here), then streams it again
through a *spawned* worker from a dataset created before ``init_process_group``, and writes
the ids it saw to ``OUT/rank{R}.json``.

With a third argument ``reads``, each rank instead streams one epoch through two forked workers
with every ``UnitReader.read`` logged per process to ``OUT/reads{R}.log`` (what each of the four
consumers decoded), and writes its ids.

Usage: script.py TABLE OUT [reads]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from idxlake.loaders import DeltaIterableDataset


def epoch_ids(loader: DataLoader) -> list[list[int]]:
    """The batches' ids, all-reducing a count after each batch."""
    out = []
    for batch in loader:
        count = torch.tensor([len(batch["id"])])
        dist.all_reduce(count)
        out.append(batch["id"].tolist())
    return out


def reads(table: str, out: str) -> None:
    """Two ranks x two workers: log the row groups each consumer decodes."""
    import os

    from idxlake.loaders.decode import UnitReader

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    log = Path(out, f"reads{rank}.log")
    real = UnitReader.read

    def counting(self, unit, *args, **kwargs):  # type: ignore[no-untyped-def]
        with open(log, "a") as fh:
            fh.write(f"{os.getpid()} {unit.file}:{unit.row_group}\n")
        return real(self, unit, *args, **kwargs)

    UnitReader.read = counting  # type: ignore[method-assign]
    ds = DeltaIterableDataset(table, split="train", batch_size=32, seed=1, shuffle_buffer=64, cache_bytes=0)
    batches = epoch_ids(DataLoader(ds, batch_size=None, num_workers=2))
    dist.barrier()
    Path(out, f"rank{rank}.json").write_text(json.dumps(
        {"rank": rank, "batches": len(batches), "ids": [i for b in batches for i in b]}))
    dist.destroy_process_group()


def main(table: str, out: str) -> None:
    kw = dict(split="train", batch_size=32, seed=1, shuffle_buffer=100)
    early = DeltaIterableDataset(table, **kw)  # before the process group: a spawned worker must still shard
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    ds = DeltaIterableDataset(table, **kw)
    ds.set_epoch(1)
    batches = epoch_ids(DataLoader(ds, batch_size=None, num_workers=1))
    spawned = epoch_ids(DataLoader(early, batch_size=None, num_workers=1, multiprocessing_context="spawn"))
    in_process = epoch_ids(DataLoader(early, batch_size=None, num_workers=0))  # no set_epoch: epoch 0
    dist.barrier()
    Path(out, f"rank{rank}.json").write_text(json.dumps(
        {"rank": rank, "world_size": dist.get_world_size(), "batches": len(batches), "len": len(ds),
         "ids": [i for b in batches for i in b], "same_when_spawned": spawned == in_process}))
    dist.destroy_process_group()


if __name__ == "__main__":
    (reads if sys.argv[3:] == ["reads"] else main)(sys.argv[1], sys.argv[2])
