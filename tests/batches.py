"""Helpers of the raw-page tests: a dataset's batches over some epochs, by the loader's raw page reads or by
pyarrow's decode, and their comparison."""

from __future__ import annotations

from typing import Any

from idxlake.loaders import pages


def epochs_of(ds: Any, epochs: range, *, raw_pages: bool = True) -> list[list[dict[str, Any]]]:
    """The batches (cloned) of ``ds`` over ``epochs``; ``raw_pages=False``: every chunk decoded by pyarrow
    (``pages.RAW_PAGES`` is read when a reader first reads a row group), the reference."""
    out, before = [], pages.RAW_PAGES
    pages.RAW_PAGES = raw_pages
    try:
        for e in epochs:
            ds.set_epoch(e)
            out.append([{k: v.clone() for k, v in b.items()} for b in ds])
    finally:
        pages.RAW_PAGES = before
    return out


def assert_same(a: list, b: list) -> None:
    """The same epochs of batches: keys, dtypes and values, every tensor contiguous."""
    import torch

    assert [len(x) for x in a] == [len(y) for y in b]
    for x, y in zip(a, b, strict=True):
        for bx, by in zip(x, y, strict=True):
            assert bx.keys() == by.keys()
            for k in bx:
                assert bx[k].dtype == by[k].dtype and bx[k].is_contiguous() and torch.equal(bx[k], by[k]), k
