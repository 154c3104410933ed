"""The background prefetch used by ingest: order, error propagation, early stop."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from idxlake.pipeline.ingest.prefetch import prefetch


def test_yields_in_order() -> None:
    assert list(prefetch(iter(range(100)), depth=3)) == list(range(100))


def test_errors_reraise_in_consumer() -> None:
    def bad() -> Iterator[int]:
        yield 1
        raise ValueError("decoder failed at byte 42")

    got = []
    with pytest.raises(ValueError, match="byte 42"):
        for x in prefetch(bad()):
            got.append(x)
    assert got == [1]


def test_closing_early_stops_the_thread() -> None:
    produced = []

    def endless() -> Iterator[int]:
        i = 0
        while True:
            produced.append(i)
            yield i
            i += 1

    before = threading.active_count()
    gen = prefetch(endless(), depth=2)
    assert next(gen) == 0
    gen.close()
    assert threading.active_count() == before
    assert len(produced) <= 5
