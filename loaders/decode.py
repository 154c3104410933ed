"""Arrow row groups to tensors: zero-copy image bytes, int64 labels/ids, float32 normalisation.

The ``image`` column of a row group is one binary array whose value buffer holds the
records back to back (each exactly ``meta.record_nbytes`` long). It becomes a
``[n, *shape]`` tensor with ``np.frombuffer`` on that buffer, no per-row Python work
and no copy; the offsets are checked in one vectorised comparison.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from idxlake.loaders import buffers, lz4pages, pages
from idxlake.loaders import plan as plans
from idxlake.loaders.gather import numpy_now, take
from idxlake.loaders.plan import Plan, Unit, corrupt_file_error, missing_file_error, open_source
from idxlake.schemas import ID, IMAGE, LABEL, SchemaMismatchError, TableMeta

if TYPE_CHECKING:
    from idxlake.loaders.arena import Region

Batch = dict[str, torch.Tensor]
"""A batch (or a decoded unit): column name -> tensor with the rows first."""


def _from_numpy(array: np.ndarray) -> torch.Tensor:
    # Arrow memory is read-only to numpy; torch warns about that once per call site. The loader
    # only ever reads these tensors (batches are gathered copies), so silence the warning.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array)


def image_tensor(array: pa.Array | pa.ChunkedArray, meta: TableMeta, *, where: str = "table") -> torch.Tensor:
    """Decode a binary ``image`` column into a ``[n, *meta.shape]`` tensor without copying.

    Args:
        array: The column (binary or large_binary, no nulls).
        meta: The table metadata (record shape and dtype).
        where: Names the file / row group in errors.

    Returns:
        A tensor of ``meta.dtype`` viewing the Arrow value buffer (read-only memory).

    Raises:
        SchemaMismatchError: a null or a value of the wrong length.
    """
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks() if array.num_chunks != 1 else array.chunk(0)
    n, record = len(array), meta.record_nbytes
    dtype = meta.image_dtype.little_endian
    if n == 0:
        return torch.from_numpy(np.empty((0, *meta.shape), dtype=dtype.newbyteorder("=")))
    if array.null_count:
        raise SchemaMismatchError(f"{where}: column 'image' has {array.null_count} null value(s)")
    offset_type = np.int64 if pa.types.is_large_binary(array.type) else np.int32
    _, offsets_buf, values_buf = array.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=offset_type, count=n + 1, offset=array.offset * offset_type().itemsize)
    first = int(offsets[0])
    if int(offsets[-1]) - first != n * record or np.any(np.diff(offsets) != record):
        lengths = np.diff(offsets)
        bad = int(np.argmax(lengths != record))
        raise SchemaMismatchError(f"{where}: image value {bad} is {int(lengths[bad])} bytes, expected "
                                  f"{record} ({'x'.join(map(str, meta.shape))} {meta.dtype})")
    values = np.frombuffer(values_buf, dtype=dtype, count=n * record // dtype.itemsize, offset=first)
    if not dtype.isnative:  # pragma: no cover - big-endian hosts only
        values = values.astype(dtype.newbyteorder("="))
    return _from_numpy(values.reshape(n, *meta.shape))


def int_tensor(array: pa.Array | pa.ChunkedArray) -> torch.Tensor:
    """An integer column as an ``int64`` tensor (float label columns stay floating point)."""
    values = array.to_numpy()
    if np.issubdtype(values.dtype, np.floating):
        return torch.from_numpy(np.array(values))
    return torch.from_numpy(values.astype(np.int64))


class Normalizer:
    """Turn gathered images into float32: scaled to [0, 1] by the table's scale, then
    normalised with a mean and std (by default the table's own, see ``TableMeta.normalization``).

    Args:
        meta: Table metadata.
        mean: Mean in scaled units; the table's when ``None``.
        std: Std in scaled units; the table's when ``None``.
    """

    def __init__(self, meta: TableMeta, mean: float | None = None, std: float | None = None) -> None:
        table_mean, table_std = meta.normalization()
        self.mean = table_mean if mean is None else mean
        self.std = table_std if std is None else std
        if not np.isfinite(self.mean) or not np.isfinite(self.std) or self.std <= 0:
            self.mean, self.std = 0.0, 1.0
        self.mul = 1.0 / (meta.scale * self.std)
        self.sub = self.mean / self.std

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """``(images / scale - mean) / std`` in float32 (two in-place ops after the cast)."""
        out = images.to(torch.float32)
        return out.mul_(self.mul).sub_(self.sub)


class UnitReader:
    """Read units of a plan with pyarrow (never deltalake), keeping files open per process and thread.

    Picklable: open files are dropped when pickled and reopened in the new process.

    Args:
        plan: The plan whose units are read.
    """

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self._local = threading.local()
        self._pid = os.getpid()
        self.pool = buffers.BufferPool()
        self._chunks: dict[tuple[int, int], pages.Chunk | None] = {}  # (file, row group) -> raw image chunk
        self._headers: dict[tuple[int, int], int] = {}  # (file, row group) -> bytes before its one page's records

    def __getstate__(self) -> dict[str, Any]:
        return {"plan": self.plan}

    def __setstate__(self, state: Mapping) -> None:
        UnitReader.__init__(self, state["plan"])

    def _file(self, index: int) -> tuple[pq.ParquetFile, pa.NativeFile]:
        if self._pid != os.getpid():  # forked: do not share file handles (or buffers) with the parent
            self._local, self._pid, self.pool = threading.local(), os.getpid(), buffers.BufferPool()
        files = self._local.__dict__.setdefault("files", {})  # one reader per thread
        opened = files.get(index)
        if opened is None:
            opened = files[index] = open_source(self.plan.snapshot, self.plan.files[index])
        return opened

    def _raw_chunk(self, unit: Unit, pf: pq.ParquetFile, source: pa.NativeFile) -> pages.Chunk | None:
        """The unit's image chunk when :mod:`idxlake.loaders.pages` reads it (else pyarrow does): uint8
        records (the arena's region holds bytes)."""
        key = (unit.file, unit.row_group)
        if key not in self._chunks:
            meta, chunk, table = pf.metadata, None, self.plan.snapshot.meta
            names = [meta.schema.column(i).path for i in range(meta.num_columns)]
            if pages.RAW_PAGES and IMAGE in names and table.dtype == "uint8":
                chunk = pages.plain_chunk(meta, unit.row_group, names.index(IMAGE), record=table.record_nbytes,
                                          file_size=source.size())
            self._chunks[key] = chunk
        return self._chunks[key]

    def reads_raw(self) -> bool:
        """Whether this plan's image chunks are read raw (judged by its first unit's): a streaming arena
        then keeps a :class:`~idxlake.loaders.arena.Region` for them."""
        if IMAGE not in self.plan.columns or not self.plan.units:
            return False
        unit = self.plan.units[0]
        try:
            return self._raw_chunk(unit, *self._file(unit.file)) is not None
        except Exception:
            return False

    def _stored(self, unit: Unit, source: pa.NativeFile, chunk: pages.Chunk, into: Region | None,
                header: int | None) -> np.ndarray:
        """The chunk's bytes as stored: a view of its mapped file, else read into a slot of ``into`` placed
        so that its records fall on region rows (``header``: the bytes before them, when known), else
        into a pool buffer."""
        space = into.space if into is not None else None
        mapped = space.file(unit.file) if space is not None else None  # a local file mapped into the arena
        if mapped is not None:
            if chunk.offset + chunk.size > mapped:
                raise pages.PageError(f"the image chunk at byte {chunk.offset} has {max(0, mapped - chunk.offset)} "
                                      f"of its {chunk.size} bytes; file truncated?", min(mapped, chunk.offset))
            return space.view(unit.file, chunk.offset, chunk.size)  # type: ignore[union-attr]
        buf = into.chunk(chunk.size, header) if into is not None and header is not None else None
        buf = self.pool.take(chunk.size) if buf is None else buf
        source.seek(chunk.offset)
        got = source.readinto(buf)
        if got != chunk.size:
            raise pages.PageError(f"the image chunk at byte {chunk.offset} has {got} of its {chunk.size} bytes; "
                                  "file truncated?", chunk.offset + got)
        return buf

    def _raw_image(self, unit: Unit, source: pa.NativeFile, chunk: pages.Chunk, into: Region | None) -> torch.Tensor:
        meta, key = self.plan.snapshot.meta, (unit.file, unit.row_group)
        whole = unit.rows is None  # a row selection is gathered out of a pool buffer, never a slot
        if chunk.codec == "LZ4_RAW":  # decompressed into a slot (records on region rows), else a pool buffer
            recorded = self.plan.files[unit.file].num_records
            if unit.num_rows > recorded:  # the footer sizes the output: never past what the Delta log records
                raise pages.PageError(f"the row group claims {unit.num_rows} rows, the Delta log records "
                                      f"{recorded} for the file", chunk.offset)
            stored = self._stored(unit, source, chunk, into, None)
            size = unit.num_rows * (meta.record_nbytes + 4)
            out = into.chunk(size, 0) if into is not None and whole else None
            images = lz4pages.decompress_pages(stored, self.pool.take(size) if out is None else out,
                                               record=meta.record_nbytes, rows=unit.num_rows, start=chunk.offset,
                                               verify=plans.PAGE_CHECKSUMS)
            return _from_numpy(images.view(meta.image_dtype.little_endian).reshape(unit.num_rows, *meta.shape))
        buf = self._stored(unit, source, chunk, into, self._headers.get(key) if whole else None)
        parts = pages.read_pages(buf, record=meta.record_nbytes, rows=unit.num_rows, start=chunk.offset,
                                 verify=plans.PAGE_CHECKSUMS)
        if len(parts) == 1:
            images = parts[0]
            self._headers[key] = images.__array_interface__["data"][0] - buf.__array_interface__["data"][0] - 4
        else:  # one contiguous array (the chunk's buffer goes back to the pool)
            images = self.pool.take(unit.num_rows * meta.record_nbytes).reshape(unit.num_rows, meta.record_nbytes)
            if parts:
                np.concatenate(parts, out=images)
        return _from_numpy(images.view(meta.image_dtype.little_endian).reshape(unit.num_rows, *meta.shape))

    def read(self, unit: Unit, into: Region | None = None) -> Batch:
        """Decode one unit's projected columns (selected rows only).

        Args:
            unit: The unit.
            into: An arena's region: a raw image chunk of one page is read straight into one of its slots
                (:class:`~idxlake.loaders.arena.Region`), when its header's length is known and a slot is free.

        Returns:
            ``image`` (``[n, 1, H, W]`` for 2-D records, else ``[n, *shape]``; table dtype, possibly
            read-only Arrow memory), ``label`` and ``id`` (``int64``), for the plan's columns.

        Raises:
            MissingDataFileError: the file vanished since planning.
            SchemaMismatchError: the data does not follow the contract.
        """
        data_file = self.plan.files[unit.file]
        where = f"{data_file.uri} row group {unit.row_group}"
        columns, out = list(self.plan.columns), {}
        try:
            pf, source = self._file(unit.file)
            chunk = self._raw_chunk(unit, pf, source) if IMAGE in columns else None
            if chunk is not None and chunk.codec != "UNCOMPRESSED" and into is None:
                chunk = None  # decompressed here only into an arena's region: else pyarrow's buffers beat a pool's
            if chunk is not None:
                out[IMAGE] = self._raw_image(unit, source, chunk, into)
                columns.remove(IMAGE)
            table = pf.read_row_group(unit.row_group, columns=columns, use_threads=False) if columns else None
        except FileNotFoundError as exc:
            raise missing_file_error(self.plan.snapshot, data_file) from exc
        except pages.PageError as exc:
            if not exc.corrupt:
                raise SchemaMismatchError(f"{where}: {exc} ({'x'.join(map(str, self.plan.snapshot.meta.shape))} "
                                          f"{self.plan.snapshot.meta.dtype}); not this table's records: re-ingest "
                                          "the split") from None
            raise corrupt_file_error(self.plan.snapshot, data_file, exc, f" row group {unit.row_group}") from None
        except (OSError, pa.ArrowException) as exc:  # a page checksum, the codec or the encoding failed
            raise corrupt_file_error(self.plan.snapshot, data_file, exc, f" row group {unit.row_group}") from exc
        if table is not None and table.num_rows != unit.num_rows:
            raise SchemaMismatchError(f"{where}: has {table.num_rows} rows, the plan expected {unit.num_rows}")
        for name in columns:
            column = table.column(name)  # type: ignore[union-attr]
            if name == IMAGE:
                out[name] = image_tensor(column, self.plan.snapshot.meta, where=where)
            elif name in (LABEL, ID):
                out[name] = int_tensor(column)
        if IMAGE in out and out[IMAGE].dim() == 3:
            out[IMAGE] = out[IMAGE].unsqueeze(1)  # [n, 1, H, W]
        out = {name: out[name] for name in self.plan.columns if name in out}
        if unit.rows is not None:  # with a pool: on this reader thread, not torch's pool (loaders/gather.py)
            index = torch.from_numpy(unit.rows)
            out = {k: take(v, index) if numpy_now() else v.index_select(0, index) for k, v in out.items()}
        return out
