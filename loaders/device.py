"""Batches straight onto an accelerator: pinned host memory, copies one batch ahead on a side stream.

:class:`DeviceLoader` wraps any iterable of batch dicts (a ``DataLoader``, a
:class:`RingDataLoader`, the dataset itself). On CUDA it pins each host batch, issues its
``non_blocking`` copies on a side stream while the previous batch is in use, and makes the
consumer's stream wait for them; uint8 images stay uint8 on the host (a quarter of the
float32 bytes over the bus) and are normalised to float32 on the device. On any other
device (``"cpu"``) the same path runs without pinning or streams.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch

from idxlake.loaders.decode import Batch, Normalizer
from idxlake.schemas import IMAGE


class DeviceLoader:
    """Iterate ``loader``'s batches on ``device``.

    Args:
        loader: Yields batch dicts of host tensors.
        device: Target device (``"cuda"``, ``"cuda:1"``, ``"cpu"``...).
        normalize: Turns uint8 images into normalised float32 *on the device* (for instance
            ``Normalizer(ds.meta)``, the table's statistics); ``None`` leaves them as they are.
    """

    def __init__(self, loader: Iterable[Batch], device: str | torch.device, *,
                 normalize: Normalizer | None = None) -> None:
        self.loader, self.device, self.normalize = loader, torch.device(device), normalize
        self.cuda = self.device.type == "cuda"

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]

    def _send(self, batch: Batch, stream: Any) -> Batch:
        if not self.cuda:
            out = {k: v.to(self.device) for k, v in batch.items()}
        else:
            with torch.cuda.stream(stream):
                out = {k: (v if v.is_pinned() else v.pin_memory()).to(self.device, non_blocking=True)
                       for k, v in batch.items()}
        if self.normalize is not None and IMAGE in out and out[IMAGE].dtype == torch.uint8:
            if self.cuda:
                with torch.cuda.stream(stream):
                    out[IMAGE] = self.normalize(out[IMAGE])
            else:
                out[IMAGE] = self.normalize(out[IMAGE])
        return out

    def __iter__(self) -> Iterator[Batch]:
        stream = torch.cuda.Stream(self.device) if self.cuda else None
        it = iter(self.loader)
        ahead = next(it, None)
        ahead = self._send(ahead, stream) if ahead is not None else None
        while ahead is not None:
            current = ahead
            if stream is not None:
                torch.cuda.current_stream(self.device).wait_stream(stream)
                for v in current.values():  # the consumer's stream owns them now
                    v.record_stream(torch.cuda.current_stream(self.device))
            nxt = next(it, None)
            ahead = self._send(nxt, stream) if nxt is not None else None  # one batch ahead
            yield current
