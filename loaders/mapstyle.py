"""``DeltaImageDataset``: a map-style dataset over a pinned table version (torchvision's contract).

``ds[i] -> (image, target)`` with ``transform`` / ``target_transform``, ``len(ds)``,
``.classes``, ``.class_to_idx``, ``.targets`` and ``.data``, as ``torchvision.datasets.MNIST``.
The selected rows are decoded once, row group by row group, into ONE preallocated
buffer (memory = the image bytes, plus 16 bytes a row for labels and ids), in
``(split, id)`` order, so ``ds[i]`` of a split is record ``i`` of its source file.
Reading goes through the pinned :class:`~idxlake.schemas.TableSnapshot` with pyarrow only.

DataLoader workers share the buffer: forked workers see the parent's pages copy-on-write
(only read, so never copied); spawned / forkserver workers receive the tensor through
torch's shared-memory pickling (the buffer moves to shared memory once, in place, and
every worker maps it). A plain ``pickle`` copies the data by value.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import torch
from torch.utils.data import DataLoader, Dataset

from idxlake.loaders.bufferimage import BufferImage
from idxlake.loaders.decode import UnitReader
from idxlake.loaders.options import pin_snapshot
from idxlake.loaders.plan import PinnedPlan, Plan, build_plan
from idxlake.schemas import ID, IMAGE, LABEL, LoaderConfigError, TableMeta, TableSnapshot
from idxlake.schemas.versions import Timestamp

ImageType = Literal["pil", "tensor", "numpy", "float32"]
"""``pil``: a PIL image (mode ``L`` for 2-D uint8 records); ``tensor``: ``[1, H, W]``; ``numpy``: ``[H, W]``;
``float32``: a float32 ``[H, W]`` array, uint8 scaled to [0, 1] (the seed's per-sample object)."""

IMAGE_TYPES: tuple[str, ...] = ("pil", "tensor", "numpy", "float32")

DEFAULT_MAX_BYTES = 4 << 30
"""Largest image buffer (bytes) a map-style dataset decodes into memory by default: 4 GiB."""


def _size(nbytes: int) -> str:
    if nbytes < 1 << 20:
        return f"{nbytes / 1024:,.1f} KiB"
    return f"{nbytes / (1 << 20):,.1f} MiB" if nbytes < 1 << 30 else f"{nbytes / (1 << 30):,.2f} GiB"


def _split_codes(plan: Plan) -> list[int]:
    """Per unit, the rank of its split in the order the dataset presents splits (as asked, else sorted)."""
    names = list(plan.splits) if plan.splits is not None else sorted({f.split for f in plan.files})
    return [names.index(plan.files[u.file].split) for u in plan.units]


def load_buffer(plan: Plan) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Decode a plan's rows into ``(images [N, *shape], labels [N], ids [N])``, sorted by ``(split, id)``.

    Labels and ids are read first (small) to place every row; the images are then streamed one
    row group at a time straight into their rows of one preallocated tensor: peak memory is the
    buffer plus one decoded row group (Arrow's allocator is asked to release each group's pages).
    """
    meta = plan.snapshot.meta
    small = UnitReader(dataclasses.replace(plan, columns=(LABEL, ID)))
    parts = [small.read(u) for u in plan.units]
    labels = torch.cat([p[LABEL] for p in parts])
    ids = torch.cat([p[ID] for p in parts])
    codes = np.repeat(np.array(_split_codes(plan), dtype=np.int64), [len(p[ID]) for p in parts])
    order = np.lexsort((ids.numpy(), codes))
    in_order = bool(np.all(order == np.arange(len(order))))
    dest = None
    if not in_order:
        dest = torch.empty(len(order), dtype=torch.int64)
        dest[torch.from_numpy(order)] = torch.arange(len(order))
        labels, ids = labels[torch.from_numpy(order)], ids[torch.from_numpy(order)]
    first = np.empty(0, dtype=meta.image_dtype.little_endian.newbyteorder("="))
    images = torch.empty((len(order), *meta.shape), dtype=torch.from_numpy(first).dtype)
    reader = UnitReader(dataclasses.replace(plan, columns=(IMAGE,)))
    pool = pa.default_memory_pool()
    pos = 0
    for unit in plan.units:
        block = reader.read(unit)[IMAGE].reshape(-1, *meta.shape)  # a view of Arrow memory
        n = len(block)
        if dest is None:
            images[pos:pos + n].copy_(block)
        else:
            images.index_copy_(0, dest[pos:pos + n], block)
        pos += n
        del block
        pool.release_unused()  # hand the row group's pages back: the peak stays buffer + one row group
    return images, labels, ids


class DeltaImageDataset(PinnedPlan, Dataset[tuple[Any, Any]]):
    """Map-style dataset of ``(image, target)`` over a pinned version of an idxlake table.

    Args:
        table: Table path or URI, or a :class:`~idxlake.schemas.TableSnapshot` already pinned.
        split: ``"train"``, ``"test"``, a list of splits, or ``None`` for all.
        transform: Callable on each image (as ``image_type``), e.g. a torchvision pipeline.
        target_transform: Callable on each target (an ``int``; a ``float`` for float labels).
        filter: Row filter, as for :class:`~idxlake.loaders.DeltaIterableDataset` (``"label < 5"``).
        version: Table version to pin; the latest when ``None``.
        storage_options: Object-store options (delta-rs style keys).
        image_type: ``"pil"`` (default, as torchvision: mode ``L`` for 2-D uint8 records, a
            :class:`~idxlake.loaders.bufferimage.BufferImage` mapped read-only over its row),
            ``"tensor"`` (``[1, H, W]`` for 2-D records, else the record shape; the table dtype),
            ``"numpy"`` (``[*shape]``) or ``"float32"`` (a float32 ``[*shape]`` array, uint8 records
            divided by 255: the seed's per-sample object, without a float32 copy of the dataset).
            Modifying an image never touches the shared buffer.
        max_bytes: Refuse to decode more image bytes than this (use the streaming dataset).
        as_of: Instead of ``version``: pin the version that was latest at this timestamp (a datetime,
            naive = UTC, or text such as ``"2026-11-24 02:41:00"``).

    Raises:
        LoaderConfigError: bad option, empty selection, or more than ``max_bytes`` of images.
        TableNotFoundError: no table or version.
        SchemaMismatchError: the table does not follow the idxlake contract.
        MissingDataFileError: a file of the pinned version is gone.
    """

    def __init__(self, table: str | TableSnapshot, *, split: str | Sequence[str] | None = "train",
                 transform: Callable[[Any], Any] | None = None,
                 target_transform: Callable[[Any], Any] | None = None,
                 filter: str | pads.Expression | None = None, version: int | None = None,
                 storage_options: Mapping[str, str] | None = None, image_type: ImageType = "pil",
                 max_bytes: int = DEFAULT_MAX_BYTES, as_of: Timestamp | None = None) -> None:
        if image_type not in IMAGE_TYPES:
            raise LoaderConfigError(f"image_type must be one of {list(IMAGE_TYPES)}, got {image_type!r}")
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
            raise LoaderConfigError(f"max_bytes must be an integer >= 0, got {max_bytes!r}")
        snap = pin_snapshot(table, version=version, as_of=as_of, storage_options=storage_options)
        meta = snap.meta
        if image_type == "pil" and not _pil_compatible(meta):
            raise LoaderConfigError(
                f"{snap.uri}: image_type='pil' needs uint8 records of shape HxW, HxWx3 or HxWx4; the table "
                f"holds {'x'.join(map(str, meta.shape))} {meta.dtype}: use image_type='tensor' or 'numpy'")
        self.plan: Plan = build_plan(snap, split=split, filter=filter, columns=(IMAGE, LABEL, ID))
        nbytes = self.plan.num_rows * meta.record_nbytes
        if nbytes > max_bytes:
            raise LoaderConfigError(
                f"{self.plan.describe()}: {self.plan.num_rows:,} images of {meta.record_nbytes:,} bytes are "
                f"{_size(nbytes)} ({nbytes:,} bytes), above max_bytes={max_bytes:,} ({_size(max_bytes)}); "
                "stream the table with idxlake.DeltaIterableDataset (memory bounded by its shuffle buffer), "
                "select fewer rows with split= or filter=, or raise max_bytes")
        self.transform, self.target_transform, self.image_type = transform, target_transform, image_type
        self.data, self.targets, self.ids = load_buffer(self.plan)
        self._views()

    def _views(self) -> None:
        """Numpy views used to make samples (faster than tensor indexing; never pickled)."""
        images = self.data.numpy().view()
        images.flags.writeable = False  # samples that view the buffer (PIL, np.asarray(pil)) cannot write it
        self._images = images
        self._labels = self.targets.numpy()
        self._float_labels = bool(self.targets.is_floating_point())
        shape = self.meta.shape
        self._pil_mode = _pil_mode(self.meta) if self.image_type == "pil" else None
        self._pil_size = (shape[1], shape[0]) if self._pil_mode else None
        self._scale = self.meta.dtype == "uint8"

    def __getstate__(self) -> dict[str, Any]:
        # A DataLoader pickling the dataset for spawned workers would move these tensors to shared memory
        # IN PLACE, freeing the memory that every view made so far (samples, `ds.data.numpy()`) points to.
        # Instead each is copied into a new shared tensor; the old one lives on while a view of it does.
        for name in ("data", "targets", "ids"):
            tensor = getattr(self, name)
            if not tensor.is_shared():
                setattr(self, name, torch.empty(tensor.shape, dtype=tensor.dtype).share_memory_().copy_(tensor))
        self._views()
        state = dict(self.__dict__)
        for key in _VIEWS:
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._views()

    @property
    def classes(self) -> list[str]:
        """Class names from the table (label ``i`` is ``classes[i]``); the distinct labels as
        strings for a table that names none."""
        names = self.meta.class_names
        if names:
            return list(names)
        top = int(self.targets.max()) if len(self.targets) and not self._float_labels else -1
        return [str(i) for i in range(top + 1)]

    @property
    def class_to_idx(self) -> dict[str, int]:
        """Class name -> label."""
        return {name: i for i, name in enumerate(self.classes)}

    @property
    def nbytes(self) -> int:
        """Bytes of the image buffer."""
        return self.data.numel() * self.data.element_size()

    def __len__(self) -> int:
        return len(self._labels)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        """``(image, target)`` of row ``index``, after ``transform`` / ``target_transform``.

        Raises:
            TypeError: ``index`` is not an integer (a slice: ``ds.data[a:b]``, ``ds.targets[a:b]``).
            IndexError: out of range.
        """
        try:
            index = operator.index(index)
        except TypeError:
            raise TypeError(f"{type(self).__name__} indices must be integers, not {type(index).__name__}; "
                            "ds.data[a:b] and ds.targets[a:b] hold the images and labels of a range") from None
        image = self._images_of(np.asarray([index], dtype=np.intp))[0]
        target: Any = self._labels[index].item()
        if self.transform is not None:
            image = self.transform(image)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return image, target

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[Any, Any]]:
        """The samples of ``indices``, as ``[self[i] for i in indices]``, in one call.

        ``DataLoader`` (torch >= 2.1) fetches a whole batch through it: the images are gathered
        with one numpy indexing and the targets converted with one ``tolist``; ``transform`` and
        ``target_transform`` still run once per sample, each drawing its own randomness.
        """
        index = np.asarray(indices, dtype=np.intp).reshape(-1)
        images = self._images_of(index)
        targets = self._labels[index].tolist()
        transform, target_transform = self.transform, self.target_transform
        if transform is not None:
            images = [transform(image) for image in images]
        if target_transform is not None:
            targets = [target_transform(target) for target in targets]
        return list(zip(images, targets, strict=True))

    def _images_of(self, index: np.ndarray) -> list[Any]:
        """The images of rows ``index`` as ``image_type``, one fresh object each."""
        rows = self._images
        kind = self.image_type
        if kind == "pil":
            mode, size = self._pil_mode, self._pil_size
            return [BufferImage.over(rows[i], mode, size) for i in index.tolist()]
        if kind == "float32":
            block = rows[index].astype(np.float32)
            if self._scale:
                block /= 255  # as the seed's astype(np.float32) / 255 and ToTensor: same float32 values
            return list(block)
        block = rows[index]  # one gather: a fresh array, never the buffer
        if kind == "tensor":
            tensor = torch.from_numpy(block)
            return list((tensor.unsqueeze(1) if tensor.dim() == 3 else tensor).unbind(0))
        return list(block)

    def dataloader(self, *, num_workers: int = 0, pin_memory: bool = False, **kwargs: Any) -> DataLoader:
        """A ``DataLoader`` configured for this dataset (see :func:`idxlake.loaders.factory.dataloader`)."""
        from idxlake.loaders.factory import dataloader

        return dataloader(self, num_workers=num_workers, pin_memory=pin_memory, **kwargs)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.plan.describe()}, {len(self):,} rows, "
                f"{'x'.join(map(str, self.meta.shape))} {self.meta.dtype}, image_type={self.image_type!r})")


_VIEWS = ("_images", "_labels", "_float_labels", "_pil_mode", "_pil_size", "_scale")


def _pil_mode(meta: TableMeta) -> str | None:
    """PIL mode of the records (``L``, ``RGB``, ``RGBA`` for uint8 ``HxW``, ``HxWx3``, ``HxWx4``), else None."""
    shape = meta.shape
    if meta.dtype != "uint8":
        return None
    if len(shape) == 2:
        return "L"
    return {3: "RGB", 4: "RGBA"}.get(shape[2]) if len(shape) == 3 else None


def _pil_compatible(meta: TableMeta) -> bool:
    return _pil_mode(meta) is not None
