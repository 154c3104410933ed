"""``idxlake show``: decoding, PNG grids, text renderings, selection with --split/--where."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from conftest import SyntheticSource
from PIL import Image

from idxlake import ingest
from idxlake.cli import main
from idxlake.pipeline.inspect.render import (
    PAD,
    SHADES,
    caption_lines,
    decode_images,
    display_pixels,
    grid_geometry,
    png_grid,
    select_images,
    text_grid,
    text_render,
)
from idxlake.schemas import QueryError, SchemaMismatchError, TableMeta, snapshot


def _meta(shape: tuple[int, ...], dtype: str) -> TableMeta:
    return TableMeta(dataset="generic", shape=shape, dtype=dtype, label_dtype="uint8")


def test_decode_roundtrip_multibyte_and_views() -> None:
    images = np.arange(2 * 3 * 4, dtype="<i2").reshape(2, 3, 4) - 7
    values = pa.array([im.tobytes() for im in images], pa.binary())
    for arr in (values, values.cast(pa.binary_view()), pa.chunked_array([values[:1], values[1:]])):
        np.testing.assert_array_equal(decode_images(arr, _meta((3, 4), "int16")), images)
    assert decode_images(pa.array([], pa.binary()), _meta((3, 4), "int16")).shape == (0, 3, 4)
    with pytest.raises(SchemaMismatchError, match="image value 1 has 3 bytes"):
        decode_images(pa.array([b"\0" * 24, b"abc"]), _meta((3, 4), "int16"))


def test_display_pixels_scales_non_uint8() -> None:
    floats = np.array([[-1.0, 0.0], [1.0, np.nan]], dtype=np.float32)
    np.testing.assert_array_equal(display_pixels(floats), [[0, 128], [255, 0]])
    np.testing.assert_array_equal(display_pixels(np.full((2, 2), 5, np.int32)), np.zeros((2, 2)))
    assert display_pixels(np.zeros(6, np.uint8)).shape == (1, 6)
    assert display_pixels(np.zeros((2, 3, 5), np.uint8)).shape == (6, 5)
    assert display_pixels(np.zeros((2, 3, 3), np.uint8)).shape == (2, 3, 3)


def test_text_render_shades_and_size() -> None:
    image = np.zeros((28, 28), np.uint8)
    image[:, 14:] = 255
    lines = text_render(image, width=28)
    assert len(lines) == 14 and all(line == " " * 14 + SHADES[-1] * 14 for line in lines)
    grid = text_grid([image] * 3, [["1", "train:0"]] * 3, width=14, total_width=32).splitlines()
    assert grid[0].startswith("1 train:0") and len(grid[0].split("1 train:0")) == 3  # two per row
    assert max(len(line) for line in grid) <= 32


def test_png_grid_size_matches_geometry() -> None:
    pixels = [np.full((28, 28), i * 20, np.uint8) for i in range(10)]
    image = png_grid(pixels, [["7", f"test:{i}"] for i in range(10)], columns=4, scale=2)
    geo = grid_geometry(10, (28, 28), columns=4, scale=2)
    assert (geo.columns, geo.rows) == (4, 3)
    assert image.size == (4 * 56 + 5 * PAD, 3 * (geo.caption_height + 56) + 4 * PAD) == (geo.width, geo.height)
    x, y = PAD + 56 + PAD, PAD + geo.caption_height
    assert image.getpixel((x + 5, y + 5)) == (20, 20, 20)  # second cell, image part


def test_caption_uses_class_names() -> None:
    assert caption_lines({"label": 3, "split": "train", "id": 9}, ("0", "1", "2", "3")) == ["3", "train:9"]
    assert caption_lines({"label": 1, "split": "test", "id": 0}, ("tee", "trouser")) == ["1 trouser", "test:0"]


def test_show_png_on_real_mnist(mnist_table: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    png = tmp_path / "grid.png"
    assert main(["show", mnist_table, "--split", "train", "--where", "label = 3", "--limit", "10",
                 "--png", str(png), "--columns", "5", "--scale", "3"]) == 0
    assert "10 images" in capsys.readouterr().out
    with Image.open(png) as image:
        geo = grid_geometry(10, (28, 28), columns=5, scale=3)
        assert image.format == "PNG" and image.size == (geo.width, geo.height)
        assert image.size == (5 * 84 + 6 * PAD, 2 * (geo.caption_height + 84) + 3 * PAD)
    rows, meta = select_images(mnist_table, split="train", where="label = 3", limit=10)
    assert rows.column("label").to_pylist() == [3] * 10
    assert rows.column("id").to_pylist() == sorted(rows.column("id").to_pylist())
    first = decode_images(rows.column("image")[:1], meta)[0]
    with Image.open(png) as image:  # the first cell shows the first image, scaled 3x
        y0 = PAD + geo.caption_height
        cell = np.asarray(image.convert("L"))[y0:y0 + 84, PAD:PAD + 84]
    np.testing.assert_array_equal(cell[::3, ::3], first)


def test_show_text_default(mnist_table: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["show", mnist_table, "--limit", "2", "--width", "28"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("7 test:0") and "2 test:1" in out[0]
    assert len(out) == 15 and any(set(line) & set(SHADES[5:]) for line in out[1:])


def test_show_time_travel_and_empty(tmp_path: Path, synthetic_source: SyntheticSource,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    table = str(tmp_path / "t")
    ingest(synthetic_source.root, table)
    ingest(synthetic_source.root, table, mode="append", allow_duplicate=True)
    assert main(["show", table, "--where", "id >= 300", "--split", "train", "--version", "0"]) == 2
    assert "no rows match" in capsys.readouterr().err
    rows, meta = select_images(table, where="id >= 300", split="train", limit=3, engine="duckdb")
    images, _ = synthetic_source.arrays["train"]
    np.testing.assert_array_equal(decode_images(rows.column("image"), meta), images[:3])
    assert meta == snapshot(table).meta


def test_show_rejects_writes_and_bad_options(mnist_table: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(QueryError, match="refused"):
        select_images(mnist_table, where="label IN (DELETE FROM mnist RETURNING label)")
    with pytest.raises(QueryError, match=r"--where '1 = 1; SELECT 1' is not one predicate: it has ';'"):
        select_images(mnist_table, where="1 = 1; SELECT 1")
    with pytest.raises(SystemExit) as exit_info:
        main(["show", mnist_table, "--limit", "0"])
    assert exit_info.value.code == 2 and "argument --limit: must be >= 1, got 0" in capsys.readouterr().err


@pytest.mark.parametrize("where", ["label = 3) OR (1=1) --", "label = 3 /* open", "label = 'x", "(label = 3",
                                   'label = "x', "label = 3;"])
def test_a_where_that_is_no_single_predicate_is_refused(mnist_table: str, where: str) -> None:
    """``label = 3) OR (1=1) --`` dropped the split filter, the order and the limit (every row rendered)."""
    with pytest.raises(QueryError, match="is not one predicate"):
        select_images(mnist_table, where=where, split="test", limit=2)


def test_a_where_may_end_in_a_comment_and_the_limit_holds(mnist_table: str) -> None:
    rows, _ = select_images(mnist_table, where="label = 3 -- threes", split="test", limit=2)
    assert rows.column("label").to_pylist() == [3, 3] and set(rows.column("split").to_pylist()) == {"test"}
    rows, _ = select_images(mnist_table, where="(label = 3) OR (label = 4 AND id < 100)", split="test", limit=3)
    assert rows.num_rows == 3 and set(rows.column("label").to_pylist()) <= {3, 4}
