"""Passes that decode gather and copy with numpy on their own thread (loaders/gather.py) when torch has an
intra-op pool, leaving it asleep for the reader threads; warm passes, and any pass at 1 thread, use torch.
Checked by recording the torch calls a pass makes, and ``take`` against ``index_select``."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from idxlake.loaders import DeltaIterableDataset, pages
from idxlake.loaders.gather import take

DTYPES = [torch.uint8, torch.int16, torch.int32, torch.int64, torch.float32, torch.float64]


@settings(max_examples=60, deadline=None)
@given(dtype=st.sampled_from(DTYPES), rows=st.integers(1, 40), width=st.integers(1, 9),
       picks=st.lists(st.integers(0, 10_000), max_size=50), into=st.booleans())
def test_take_equals_index_select(dtype: torch.dtype, rows: int, width: int, picks: list[int], into: bool) -> None:
    source = (torch.arange(rows * width * 3) % 251).to(dtype).reshape(rows, width, 3)
    index = torch.tensor([p % rows for p in picks], dtype=torch.int64)
    expected = source.index_select(0, index)
    out = torch.full_like(expected, 7) if into else None
    got = take(source, index, out)
    assert got.dtype == dtype and torch.equal(got, expected)
    if into:
        assert got is out


@pytest.mark.parametrize("into", [False, True])
@pytest.mark.parametrize("bad", [5, -1])
def test_take_refuses_rows_outside_the_tensor(into: bool, bad: int) -> None:
    source = torch.zeros((5, 2), dtype=torch.uint8)
    out = torch.empty((2, 2), dtype=torch.uint8) if into else None
    with pytest.raises(IndexError, match="out of"):
        take(source, torch.tensor([0, bad]), out)


@pytest.fixture
def two_threads() -> Iterator[None]:
    """torch with an intra-op pool (2 threads), whatever this machine's default."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def torch_calls(monkeypatch: pytest.MonkeyPatch) -> Counter:
    """Counts the loader's batch gathers and copies that run through torch (and so its intra-op pool)."""
    calls: Counter = Counter()
    for owner, name in ((torch.Tensor, "index_select"), (torch, "index_select"), (torch.Tensor, "copy_")):
        real = getattr(owner, name)

        def counted(*args, _real=real, _name=name, **kwargs):  # type: ignore[no-untyped-def]
            calls[_name] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(owner, name, counted)
    return calls


def test_decoding_passes_stay_off_torchs_pool_and_warm_passes_use_it(synthetic_table, torch_calls: Counter,
                                                                     two_threads: None,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # pyarrow's decode (a raw-page region's strided records are gathered by torch: measured faster)
    monkeypatch.setattr(pages, "RAW_PAGES", False)
    table, source = synthetic_table
    images = torch.from_numpy(source.arrays["train"][0]).unsqueeze(1)
    cold = DeltaIterableDataset(table, split="train", batch_size=16, seed=3, cache_bytes=0)
    cached = DeltaIterableDataset(table, split="train", batch_size=16, seed=3)
    filtered = DeltaIterableDataset(table, split="train", batch_size=16, seed=3, cache_bytes=0, filter="id >= 100")
    torch_calls.clear()
    passes = {}
    for name, ds in (("cold", cold), ("filling", cached), ("filtered", filtered)):  # passes that decode
        ds.set_epoch(0)
        passes[name] = list(ds)
    assert torch_calls == Counter(), "a decoding pass gathered or copied through torch"
    for name, batches in passes.items():
        ids = torch.cat([b["id"] for b in batches])
        assert sorted(ids.tolist()) == list(range(100 if name == "filtered" else 0, 300))
        assert torch.equal(torch.cat([b["image"] for b in batches]), images[ids])  # the right pixels
    cached.set_epoch(1)
    warm = list(cached)  # every row group in the cache: gathers by torch
    assert torch_calls["index_select"] == 3 * len(warm)  # image, label, id
    cold.set_epoch(1)
    assert [b["id"].tolist() for b in cold] == [b["id"].tolist() for b in warm]


@pytest.mark.parametrize("case", ["the benchmarks' switch", "one torch thread"])
def test_torch_gathers_while_decoding_without_a_pool_or_when_switched(
        synthetic_table, torch_calls: Counter, two_threads: None, monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    import idxlake.loaders.gather as gather

    if case == "one torch thread":  # no pool to keep asleep: torch's ops cost less per call
        torch.set_num_threads(1)
    else:
        monkeypatch.setattr(gather, "NUMPY_WHILE_DECODING", False)  # what bench_loader.py compares against
    table, _ = synthetic_table
    ds = DeltaIterableDataset(table, split="train", batch_size=16, seed=3, cache_bytes=0)
    batches = list(ds)
    # 5 row groups: label and id copied in (the image is decompressed into the arena's region itself)
    assert torch_calls["index_select"] == 3 * len(batches) and torch_calls["copy_"] >= 2 * 5
    assert ds._slots is not None and ds._slots.region is not None and ds._slots.copied == 0
