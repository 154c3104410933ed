"""Who is reading: the (rank, world size, DataLoader worker) topology of one consumer.

:class:`World` is a tiny pure value (like mosaicml/streaming's ``World``): every
sharding decision is a function of it, so it is unit-testable without a DataLoader
or a process group. Only :meth:`World.detect` looks at ``torch.distributed`` and
``torch.utils.data.get_worker_info``.
"""

from __future__ import annotations

from dataclasses import dataclass

from idxlake.schemas import LoaderConfigError


@dataclass(frozen=True)
class World:
    """The position of one consumer among all consumers of an epoch.

    Attributes:
        rank: Distributed rank (0-based).
        world_size: Number of distributed ranks.
        worker: DataLoader worker id within the rank (0 when reading in the main process).
        num_workers: DataLoader workers per rank (1 when reading in the main process).
    """

    rank: int = 0
    world_size: int = 1
    worker: int = 0
    num_workers: int = 1

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise LoaderConfigError(f"rank must be in [0, world_size): got rank={self.rank}, "
                                    f"world_size={self.world_size}")
        if self.num_workers < 1 or not 0 <= self.worker < self.num_workers:
            raise LoaderConfigError(f"worker must be in [0, num_workers): got worker={self.worker}, "
                                    f"num_workers={self.num_workers}")

    @property
    def consumer(self) -> int:
        """Index of this consumer among :attr:`consumers` (rank-major)."""
        return self.rank * self.num_workers + self.worker

    @property
    def consumers(self) -> int:
        """Total consumers of an epoch: ``world_size * num_workers``."""
        return self.world_size * self.num_workers

    @staticmethod
    def distributed(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
        """Rank and world size: the given ones, else ``torch.distributed``'s when initialised, else 0/1.

        Raises:
            LoaderConfigError: only one of ``rank`` / ``world_size`` was given.
        """
        if (rank is None) != (world_size is None):
            raise LoaderConfigError(f"give both rank and world_size or neither (got rank={rank}, "
                                    f"world_size={world_size})")
        if rank is not None and world_size is not None:
            return int(rank), int(world_size)
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    @classmethod
    def detect(cls, rank: int | None = None, world_size: int | None = None) -> World:
        """The current consumer: distributed position plus the DataLoader worker, if any.

        Args:
            rank: Explicit rank (with ``world_size``); detected when ``None``.
            world_size: Explicit world size (with ``rank``).
        """
        from torch.utils.data import get_worker_info

        r, ws = cls.distributed(rank, world_size)
        info = get_worker_info()
        if info is None:
            return cls(r, ws)
        return cls(r, ws, info.id, info.num_workers)
