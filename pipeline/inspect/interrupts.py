"""Bounding a running SQL statement: a wall-clock deadline, and Ctrl-C, on either engine.

Neither engine can be stopped from the thread that runs it: DuckDB holds its calling thread in
C++ until the statement ends, and DataFusion only checks for signals between polls of its
stream, which a heavy operator (a nested-loop join over ``md5``) does not yield for minutes.
So the statement runs in a worker thread while the calling thread waits in short joins, where
Ctrl-C (``KeyboardInterrupt``) and the deadline reach it at once. The waiter then stops the
statement: ``interrupt`` (DuckDB's ``interrupt``, which returns promptly) and a stop event the
worker checks between result batches. An engine that cannot be interrupted mid-poll (DataFusion)
gets ``grace_s`` to finish; after that its thread is abandoned: it runs until its current poll
returns, then drops the stream, which cancels the engine's tasks. :func:`abandoned` counts such
threads still alive, so that a CLI can exit without waiting for them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")

POLL_S = 0.1
"""How often the waiting thread wakes (bounds how late the deadline and Ctrl-C act)."""

_ABANDONED: set[threading.Thread] = set()


class Expired(Exception):
    """The statement ran past its deadline (raised in the waiting thread)."""


class Stopped(Exception):
    """Raised in the worker between result batches once the waiter asked it to stop."""


def supervise(work: Callable[[threading.Event], T], *, timeout_s: float,
              interrupt: Callable[[], None] | None = None, grace_s: float | None = None) -> T:
    """Run ``work(stop)`` in a daemon thread, bounded by ``timeout_s`` and Ctrl-C.

    Args:
        work: The statement; it receives the stop event to check between result batches.
        timeout_s: Wall-clock seconds before it is stopped and :class:`Expired` raised.
        interrupt: Stops the engine from another thread (``None``: only the stop event).
        grace_s: Seconds to wait for the worker once stopped (``None``: until it ends, for an
            engine whose interrupt is prompt and whose connection must be closed after it).

    Returns:
        What ``work`` returned.

    Raises:
        Expired: past ``timeout_s``.
        KeyboardInterrupt: Ctrl-C while waiting.
        BaseException: whatever ``work`` raised.
    """
    stop = threading.Event()
    out: list[tuple[bool, Any]] = []
    thread = threading.Thread(target=lambda: out.append(_outcome(work, stop)), name="idxlake-sql", daemon=True)
    end = time.monotonic() + timeout_s
    thread.start()
    try:
        while thread.is_alive():
            left = end - time.monotonic()
            if left <= 0:
                _stop(thread, stop, interrupt, grace_s, out, why="its deadline")
                raise Expired()
            thread.join(min(POLL_S, left))
    except KeyboardInterrupt:
        _stop(thread, stop, interrupt, grace_s, out, why="Ctrl-C")
        raise
    ok, value = out.pop()
    if not ok:
        raise value
    return value


def abandoned() -> int:
    """Stopped statements whose threads are still running (they end at their engine's next poll)."""
    _ABANDONED.intersection_update({t for t in _ABANDONED if t.is_alive()})
    return len(_ABANDONED)


def _stop(thread: threading.Thread, stop: threading.Event, interrupt: Callable[[], None] | None,
          grace_s: float | None, out: list[Any], *, why: str) -> None:
    stop.set()
    end = None if grace_s is None else time.monotonic() + grace_s
    while thread.is_alive() and (end is None or time.monotonic() < end):
        if interrupt is not None:  # again each time: one sent before the engine started its statement is lost
            interrupt()
        thread.join(POLL_S if end is None else max(0.0, min(POLL_S, end - time.monotonic())))
    out.clear()  # the statement's error holds the engine's result: dropped, so its connection can close
    if thread.is_alive():
        _ABANDONED.add(thread)
        logger.info("the SQL engine did not stop within %.1f s of %s; its statement is left to end in "
                       "the background at its next poll (its memory stays within --memory-mb)", grace_s, why)


def _outcome(work: Callable[[threading.Event], Any], stop: threading.Event) -> tuple[bool, Any]:
    try:
        return True, work(stop)
    except BaseException as exc:  # re-raised in the caller's thread
        return False, exc
