"""Run an iterator on a background thread a few items ahead (decompression overlaps writing)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Generator, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


def prefetch(it: Iterator[T], depth: int = 2) -> Generator[T, None, None]:
    """Yield the items of ``it``, produced on a background thread ``depth`` items ahead.

    Exceptions raised by ``it`` re-raise in the consumer; closing the generator stops the thread.
    """
    q: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(message: tuple[str, Any]) -> bool:
        """Hand ``message`` over unless the consumer has gone; False when it has."""
        while not stop.is_set():
            try:
                q.put(message, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in it:
                if not put(("item", item)):
                    return
            put(("done", None))
        except BaseException as exc:
            put(("error", exc))

    thread = threading.Thread(target=work, name="idxlake-decode", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = q.get()
            if kind == "done":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        thread.join()
