"""Pictures of the rows: decode ``image`` bytes, draw a labelled PNG grid or text renderings.

Images are decoded with the table's :class:`schemas.TableMeta` (shape, little-endian
dtype). For display, ``uint8`` pixels are used as they are; other dtypes are min-max
scaled per image to 0..255. A record shape ``(H, W)`` is a grayscale picture,
``(H, W, 3|4)`` a colour one; ``(N,)`` is shown as one row and any other shape as
``(prod(leading dims), last dim)``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from idxlake.pipeline.inspect.engines import DEFAULT_MEMORY_MB, DEFAULT_TIMEOUT_S
from idxlake.pipeline.inspect.sql import Engine
from idxlake.schemas import SchemaMismatchError, TableMeta, TableSnapshot
from idxlake.schemas.versions import Timestamp

logger = logging.getLogger(__name__)

SHADES = " .:-=+*#%@"
"""Characters from dark to bright for text renderings."""

PAD = 4
"""Pixels between grid cells and around the grid."""

LINE_PX = 12
"""Height of one caption line in the PNG grid."""

CAPTION_LINES = 2
"""Caption lines per cell: label (and class name), then ``split:id``."""

DEFAULT_COLUMNS = 8

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage


def decode_images(images: pa.Array | pa.ChunkedArray, meta: TableMeta) -> np.ndarray:
    """Decode ``image`` values into an array of shape ``(n, *meta.shape)``.

    Args:
        images: Binary (or binary view) values of the ``image`` column.
        meta: The table's metadata (shape and dtype).

    Returns:
        A read-only array in ``meta.dtype`` (native byte order).

    Raises:
        SchemaMismatchError: if a value does not hold exactly one record.
    """
    chunked = images if isinstance(images, pa.ChunkedArray) else pa.chunked_array([images])
    arr = chunked.cast(pa.binary()).combine_chunks() if len(chunked) else pa.array([], pa.binary())
    n = len(arr)
    dtype = meta.image_dtype.little_endian
    if n == 0:
        return np.empty((0, *meta.shape), dtype=dtype.newbyteorder("="))
    if arr.null_count:
        raise SchemaMismatchError(f"{arr.null_count} null image value(s); every row needs one record")
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int32)[arr.offset:arr.offset + n + 1]
    lengths = np.diff(offsets)
    if not (lengths == meta.record_nbytes).all():
        bad = int(np.flatnonzero(lengths != meta.record_nbytes)[0])
        raise SchemaMismatchError(f"image value {bad} has {int(lengths[bad])} bytes; the table's metadata "
                                  f"({meta.shape} {meta.dtype}) needs {meta.record_nbytes}")
    flat = np.frombuffer(arr.buffers()[2], dtype=np.uint8)[offsets[0]:offsets[-1]]
    return flat.view(dtype).astype(dtype.newbyteorder("="), copy=False).reshape(n, *meta.shape)


def display_pixels(image: np.ndarray) -> np.ndarray:
    """One record as displayable ``uint8`` pixels, ``(H, W)`` or ``(H, W, 3|4)``."""
    if image.ndim == 1:
        image = image[np.newaxis, :]
    elif image.ndim >= 3 and not (image.ndim == 3 and image.shape[-1] in (3, 4)):
        image = image.reshape(-1, image.shape[-1])
    if image.dtype == np.uint8:
        return image
    values = image.astype(np.float64)
    finite = np.isfinite(values)
    lo, hi = (values[finite].min(), values[finite].max()) if finite.any() else (0.0, 0.0)
    scaled = (values - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(values)
    return np.nan_to_num(scaled, nan=0.0, posinf=255.0, neginf=0.0).round().astype(np.uint8)


def caption_lines(row: Mapping[str, Any], class_names: Sequence[str]) -> list[str]:
    """The caption of one row: the label (with its class name when it differs) and ``split:id``."""
    label = row.get("label")
    text = str(label)
    if isinstance(label, int) and 0 <= label < len(class_names) and class_names[label] != text:
        text = f"{label} {class_names[label]}"
    return [text, f"{row.get('split')}:{row.get('id')}"]


@dataclass(frozen=True)
class GridGeometry:
    """Layout of a PNG grid.

    Attributes:
        columns: Cells per row.
        rows: Rows of cells.
        cell_width: Width of an image cell in pixels (image width times scale).
        cell_height: Height of the image part of a cell (image height times scale).
        caption_height: Height of the caption band above each image.
        width: Width of the whole PNG.
        height: Height of the whole PNG.
    """

    columns: int
    rows: int
    cell_width: int
    cell_height: int
    caption_height: int
    width: int
    height: int


def grid_geometry(count: int, image_size: tuple[int, int], *, columns: int | None = None,
                  scale: int = 3) -> GridGeometry:
    """Layout of ``count`` images of ``image_size = (height, width)`` pixels.

    The PNG is ``columns * cell_width + (columns + 1) * PAD`` wide and
    ``rows * (caption_height + cell_height) + (rows + 1) * PAD`` high.
    """
    columns = max(1, min(columns or DEFAULT_COLUMNS, max(count, 1)))
    rows = max(1, math.ceil(count / columns))
    cell_w, cell_h = image_size[1] * scale, image_size[0] * scale
    caption = CAPTION_LINES * LINE_PX
    return GridGeometry(columns, rows, cell_w, cell_h, caption, columns * cell_w + (columns + 1) * PAD,
                        rows * (caption + cell_h) + (rows + 1) * PAD)


def _fit(draw: Any, text: str, font: Any, width: int) -> str:
    while text and draw.textlength(text, font=font) > width:
        text = text[:-1]
    return text


def png_grid(pixels: Sequence[np.ndarray], captions: Sequence[Sequence[str]], *, columns: int | None = None,
             scale: int = 3) -> PILImage:
    """Draw images in a labelled grid.

    Args:
        pixels: Displayable images (see :func:`display_pixels`), all of the same size.
        captions: Caption lines per image (at most :data:`CAPTION_LINES` are drawn).
        columns: Cells per row (default 8, fewer for fewer images).
        scale: Integer magnification (nearest neighbour, so pixels stay crisp).

    Returns:
        A ``PIL.Image.Image`` in RGB, sized as :func:`grid_geometry` says.
    """
    from PIL import Image, ImageDraw, ImageFont

    size = pixels[0].shape[:2] if pixels else (1, 1)
    geo = grid_geometry(len(pixels), size, columns=columns, scale=scale)
    canvas = Image.new("RGB", (geo.width, geo.height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for i, (image, lines) in enumerate(zip(pixels, captions, strict=True)):
        col, row = i % geo.columns, i // geo.columns
        x = PAD + col * (geo.cell_width + PAD)
        y = PAD + row * (geo.caption_height + geo.cell_height + PAD)
        for k, line in enumerate(list(lines)[:CAPTION_LINES]):
            draw.text((x, y + k * LINE_PX), _fit(draw, line, font, geo.cell_width), fill=(0, 0, 0), font=font)
        mode = "L" if image.ndim == 2 else ("RGBA" if image.shape[-1] == 4 else "RGB")
        picture = Image.fromarray(np.ascontiguousarray(image), mode=mode).convert("RGB")
        picture = picture.resize((geo.cell_width, geo.cell_height), Image.Resampling.NEAREST)
        canvas.paste(picture, (x, y + geo.caption_height))
    return canvas


def text_render(image: np.ndarray, *, width: int = 28) -> list[str]:
    """Render one displayable image as lines of shade characters.

    Terminal cells are about twice as tall as wide, so ``H x W`` pixels become about
    ``H * width / W / 2`` lines of ``width`` characters (box-filtered).
    """
    from PIL import Image

    picture = Image.fromarray(np.ascontiguousarray(image)).convert("L")
    w = max(1, min(width, picture.width * 2))
    h = max(1, round(picture.height * w / picture.width / 2))
    small = np.asarray(picture.resize((w, h), Image.Resampling.BOX))
    index = (small.astype(np.int32) * len(SHADES)) // 256
    return ["".join(SHADES[v] for v in line).rstrip() for line in index]


def text_grid(pixels: Sequence[np.ndarray], captions: Sequence[Sequence[str]], *, width: int = 28,
              total_width: int = 80, gap: int = 2) -> str:
    """Text renderings side by side, as many per row as fit in ``total_width`` characters."""
    blocks = []
    for image, lines in zip(pixels, captions, strict=True):
        body = text_render(image, width=width)
        cell = max(max((len(b) for b in body), default=0), width if body else 0)
        head = " ".join(lines)[:cell]
        blocks.append([head.ljust(cell)] + [b.ljust(cell) for b in body])
    if not blocks:
        return ""
    cell = len(blocks[0][0])
    per_row = max(1, (total_width + gap) // (cell + gap))
    out: list[str] = []
    for start in range(0, len(blocks), per_row):
        group = blocks[start:start + per_row]
        height = max(len(b) for b in group)
        for k in range(height):
            out.append((" " * gap).join(b[k] if k < len(b) else " " * cell for b in group).rstrip())
        out.append("")
    return "\n".join(out).rstrip("\n") + "\n"


def select_images(table: str, *, split: str | None = None, where: str | None = None, limit: int = 16,
                  engine: Engine = "datafusion", name: str | None = None, version: int | None = None,
                  storage_options: Mapping[str, str] | None = None, as_of: Timestamp | None = None,
                  timeout: float = DEFAULT_TIMEOUT_S, memory_mb: int = DEFAULT_MEMORY_MB,
                  ) -> tuple[pa.Table, TableMeta]:
    """The first ``limit`` rows (by split, id) matching a SQL predicate, with the table's metadata.

    The predicate runs through :func:`idxlake.pipeline.inspect.sql.query`, the same read-only,
    bounded engine path as ``idxlake sql`` (time travel clauses included).

    Args:
        table: Table path or URI.
        split: Keep only this split.
        where: A SQL predicate over ``split``, ``id``, ``label`` (and ``image``), run by ``engine``.
        limit: Maximum rows.
        engine: ``"datafusion"`` or ``"duckdb"``.
        name: Name the table is registered under in the predicate (default from the path).
        version: Table version (time travel).
        storage_options: Object-store options.
        as_of: Instead of ``version``: the version that was latest at this timestamp.
        timeout: Seconds before the query is cancelled.
        memory_mb: Memory limit of the query in MiB.

    Returns:
        ``(rows, meta)``: a table with columns split, id, label, image.
    """
    from idxlake.pipeline.inspect.identifiers import check_identifier, table_identifier
    from idxlake.pipeline.inspect.sql import query
    from idxlake.schemas import snapshot

    name = check_identifier(name) if name else table_identifier(table)
    conditions = [f"(\n{check_predicate(where)}\n)"] if where and where.strip() else []
    if split is not None:
        conditions.append("split = '" + split.replace("'", "''") + "'")
    sql = (f"SELECT split, id, label FROM {name}"  # images are read by verified_images
           + (f" WHERE {' AND '.join(conditions)}" if conditions else "")
           + f" ORDER BY split, id LIMIT {int(limit)}")
    result = query(table, sql, engine=engine, name=name, version=version, as_of=as_of, max_rows=int(limit),
                   storage_options=storage_options, timeout=timeout, memory_mb=memory_mb)
    snap = snapshot(table, version=result.versions[name], storage_options=storage_options)
    return verified_images(snap, result.table), snap.meta


def check_predicate(where: str) -> str:
    """``where`` if it is one self-contained predicate: no ``;``, parentheses balanced, every string, quoted
    name and comment closed (it is pasted into ``WHERE (...) AND split = ... ORDER BY ... LIMIT``, and
    ``label = 3) OR (1=1) --`` would drop the split, the order and the limit).

    Raises:
        QueryError: naming what is unbalanced.
    """
    from idxlake.pipeline.inspect.sqltext import tokenize
    from idxlake.schemas import QueryError

    tokens = tokenize(f"{where}\n0")
    closed = bool(tokens) and tokens[-1].start == len(where) + 1  # the sentinel 0 is not swallowed
    depth = 0
    for token in tokens[:-1]:
        depth += {"(": 1, ")": -1}.get(token.text, 0) if token.kind == "punct" else 0
        if depth < 0 or (token.kind == "punct" and token.text == ";"):
            closed = False
    if not closed or depth:
        raise QueryError(f"--where {where!r} is not one predicate: it has ';', unbalanced parentheses, or an "
                         "unclosed string, quoted name or comment")
    return where


def verified_images(snap: TableSnapshot, rows: pa.Table) -> pa.Table:
    """``rows`` (split, id, label) with their ``image`` column, read through the snapshot's dataset:
    every page read is CRC-checked (DataFusion's reader does not check page checksums)."""
    import pyarrow.dataset as pads

    if rows.num_rows == 0:
        return rows.append_column(pa.field("image", pa.binary()), pa.array([], pa.binary()))
    from idxlake.schemas import DataCorruptionError, fs_path

    splits, ids = rows.column("split").to_pylist(), rows.column("id").to_pylist()
    wanted = pads.field("id").isin(sorted(set(ids)))
    by_key: dict[tuple[str, int], bytes] = {}
    dataset = snap.dataset(sorted(set(splits)))
    for fragment in dataset.get_fragments(filter=wanted):
        try:
            found = fragment.to_table(columns=["split", "id", "image"], filter=wanted, schema=dataset.schema)
        except (OSError, pa.ArrowException) as exc:
            rel = fragment.path.removeprefix(fs_path(snap.uri).rstrip("/") + "/")
            raise DataCorruptionError(f"{snap.uri}@v{snap.version}: data file {rel} cannot be read: {exc}; "
                                      f"run `idxlake verify {snap.uri}`") from exc
        keys = zip(found.column("split").to_pylist(), found.column("id").to_pylist(), strict=True)
        by_key.update(zip(keys, found.column("image").to_pylist(), strict=True))
    images = pa.array([by_key[key] for key in zip(splits, ids, strict=True)], pa.binary())
    return rows.append_column(pa.field("image", pa.binary()), images)
