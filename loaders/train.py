"""The reference consumer: train the classic small CNN straight from an idxlake table.

Single process, DataLoader workers, or DDP under ``torchrun`` (gloo on CPU, NCCL when
CUDA is present): the environment variables torchrun sets (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``) are detected, only rank 0 prints, and every rank reads the same pinned
table version (rank 0 resolves it and broadcasts it).
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from idxlake.loaders.dataset import DeltaIterableDataset
from idxlake.schemas import IMAGE, LABEL, LoaderConfigError, snapshot

logger = logging.getLogger(__name__)


class SmallCNN(nn.Module):
    """conv32-pool-conv64-pool-linear, the classic MNIST network.

    Args:
        shape: Record shape, ``(H, W)`` or ``(C, H, W)``.
        num_classes: Output classes.
    """

    def __init__(self, shape: tuple[int, ...] = (28, 28), num_classes: int = 10) -> None:
        super().__init__()
        channels, height, width = (1, *shape) if len(shape) == 2 else shape
        self.features = nn.Sequential(
            nn.Conv2d(channels, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())
        out_h, out_w = ((height - 2) // 2 - 2) // 2, ((width - 2) // 2 - 2) // 2
        self.head = nn.Linear(64 * out_h * out_w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a ``[B, C, H, W]`` float batch."""
        return self.head(self.features(x))


@dataclass
class TrainResult:
    """What a training run measured (identical on every rank).

    Attributes:
        losses: Mean training loss per epoch.
        samples_per_s: Training throughput per epoch, all ranks together.
        accuracy: Test accuracy after the last epoch.
        version: The table version trained on.
        rank: This process's rank (reports come from rank 0).
        world_size: Number of ranks that trained.
    """

    losses: list[float] = field(default_factory=list)
    samples_per_s: list[float] = field(default_factory=list)
    accuracy: float = math.nan
    version: int = -1
    rank: int = 0
    world_size: int = 1


def _setup_distributed() -> tuple[int, int, bool]:
    """Init the process group from torchrun's environment; ``(rank, world_size, we_own_it)``."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), False
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        return dist.get_rank(), dist.get_world_size(), True
    return 0, 1, False


def _pinned_version(table: str, version: int | None, storage_options: Mapping[str, str] | None,
                    world_size: int) -> int:
    resolved = [snapshot(table, version=version, storage_options=storage_options).version
                if world_size == 1 or dist.get_rank() == 0 else None]
    if world_size > 1:
        dist.broadcast_object_list(resolved, src=0)
    return int(resolved[0])  # type: ignore[arg-type]


def evaluate(model: nn.Module, table: str, *, version: int, batch_size: int = 1000, limit: int | None = None,
             storage_options: Mapping[str, str] | None = None) -> float:
    """Accuracy on the ``test`` split (read whole by this process, in table order)."""
    ds = DeltaIterableDataset(table, split="test", version=version, storage_options=storage_options,
                              columns=(IMAGE, LABEL), batch_size=batch_size, shuffle=False,
                              image_dtype="float32", rank=0, world_size=1)
    correct = total = 0
    model.eval()
    with torch.no_grad():
        for batch in ds:
            take = len(batch[LABEL]) if limit is None else min(len(batch[LABEL]), limit - total)
            logits = model(batch[IMAGE][:take])
            correct += int((logits.argmax(1) == batch[LABEL][:take]).sum())
            total += take
            if limit is not None and total >= limit:
                break
    return correct / max(total, 1)


def train(table: str, *, epochs: int = 2, batch_size: int = 64, workers: int = 0, limit: int | None = None,
          seed: int = 0, version: int | None = None, storage_options: Mapping[str, str] | None = None,
          lr: float = 1e-3, log: Callable[[str], None] = print) -> TrainResult:
    """Train :class:`SmallCNN` on the ``train`` split with Adam, then evaluate on ``test``.

    Args:
        table: Table path or URI.
        epochs: Passes over the training data.
        batch_size: Rows per batch and rank.
        workers: DataLoader workers per rank.
        limit: Train on at most this many samples per epoch (all ranks together) and
            evaluate on at most this many test samples.
        seed: Seed of the model initialisation and the data order.
        version: Table version; the latest (pinned once, for every rank) when ``None``.
        storage_options: Object-store options.
        lr: Adam learning rate.
        log: Called with each report line, on rank 0 only.

    Returns:
        A :class:`TrainResult`.
    """
    for name, value, low in (("epochs", epochs, 1), ("batch_size", batch_size, 1), ("workers", workers, 0)):
        if value < low:
            raise LoaderConfigError(f"{name} must be >= {low}, got {value}")
    if limit is not None and limit < 1:
        raise LoaderConfigError(f"limit must be >= 1, got {limit}")
    rank, world_size, own_group = _setup_distributed()
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(local, 1)))
    say = log if rank == 0 else (lambda _line: None)
    try:
        pinned = _pinned_version(table, version, storage_options, world_size)
        data = DeltaIterableDataset(table, split="train", version=pinned, storage_options=storage_options,
                                    columns=(IMAGE, LABEL), batch_size=batch_size, seed=seed,
                                    image_dtype="float32", rank=rank, world_size=world_size)
        meta = data.meta
        torch.manual_seed(seed)
        net = SmallCNN(meta.shape, max(len(meta.class_names), 2) if meta.class_names else 10)
        model: nn.Module = nn.parallel.DistributedDataParallel(net) if world_size > 1 else net
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        loader = DataLoader(data, batch_size=None, num_workers=workers, persistent_workers=workers > 0)
        max_batches = len(data) if limit is None else min(len(data), math.ceil(limit / (batch_size * world_size)))
        result = TrainResult(version=pinned, rank=rank, world_size=world_size)
        say(f"training on {table}@v{pinned}: {data.num_rows} rows, {world_size} rank(s) x "
            f"{max(workers, 1)} reader(s), batch {batch_size}, {max_batches} batches per rank and epoch")
        for epoch in range(epochs):
            data.set_epoch(epoch)
            model.train()
            sums = torch.zeros(2, dtype=torch.float64)  # loss * n, n
            start = time.perf_counter()
            for batch in itertools.islice(loader, max_batches):  # never fetches a batch beyond the limit
                loss = nn.functional.cross_entropy(model(batch[IMAGE]), batch[LABEL])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                n = len(batch[LABEL])
                sums += torch.tensor([loss.item() * n, n], dtype=torch.float64)
            if world_size > 1:
                dist.all_reduce(sums)
            seconds = time.perf_counter() - start
            result.losses.append(float(sums[0] / sums[1].clamp(min=1)))
            result.samples_per_s.append(float(sums[1]) / seconds)
            say(f"epoch {epoch + 1}: loss {result.losses[-1]:.4f}, {result.samples_per_s[-1]:.0f} samples/s")
        accuracy = [evaluate(net, table, version=pinned, limit=limit, storage_options=storage_options)
                    if rank == 0 else 0.0]
        if world_size > 1:
            dist.broadcast_object_list(accuracy, src=0)
        result.accuracy = float(accuracy[0])
        say(f"test accuracy: {result.accuracy:.4f}")
        return result
    finally:
        if own_group:
            dist.destroy_process_group()
