"""The training function that tests/test_torch_distributor.py hands to TorchDistributor (not collected by pytest).

Shipped by value (cloudpickle), it runs in each of the processes torchrun starts: a DDP loop of a
tiny linear classifier over ``DeltaIterableDataset`` (rank and world size from torch.distributed),
with two persistent DataLoader workers. Each rank writes the ids it saw, its batch count, its losses and a
checksum of its final weights to ``OUT/rank{R}.json``.
"""

from __future__ import annotations

import json
from pathlib import Path


def train(table: str, out: str) -> dict[str, object]:
    """Two epochs of DDP training from ``table``.

    Returns what every rank agrees on (world size, batches, weight checksum): in local mode each
    torchrun process writes its return value and TorchDistributor hands back one of them.
    """
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data import DataLoader

    from idxlake.loaders import DeltaIterableDataset

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = DistributedDataParallel(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10)))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ds = DeltaIterableDataset(table, split="train", batch_size=25, image_dtype="float32", seed=2)
    ids: list[int] = []
    losses: list[float] = []
    batches = 0
    loader = DataLoader(ds, batch_size=None, num_workers=2, persistent_workers=True)
    for epoch in range(2):
        ds.set_epoch(epoch)
        for batch in loader:
            loss = torch.nn.functional.cross_entropy(model(batch["image"]), batch["label"].long())
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            batches += 1
            if epoch == 0:
                ids += batch["id"].tolist()
    checksum = float(sum(p.detach().double().sum() for p in model.parameters()))
    summary = {"rank": rank, "world_size": dist.get_world_size(), "ids": ids, "batches": batches,
               "losses": losses, "checksum": checksum}
    Path(out, f"rank{rank}.json").write_text(json.dumps(summary))
    dist.barrier()
    dist.destroy_process_group()
    return {k: summary[k] for k in ("world_size", "batches", "checksum")}
