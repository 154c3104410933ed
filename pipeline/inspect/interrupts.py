"""Bounding a running SQL statement: a wall-clock deadline, and Ctrl-C, on either engine.

Neither engine can be stopped from the thread that runs it: DuckDB holds its calling thread in
C++ until the statement ends, and DataFusion only checks for signals between polls of its
stream, which a heavy operator (a nested-loop join over ``md5``) does not yield for minutes.
So the statement runs in a worker thread while the calling thread waits on it in short steps, where
Ctrl-C (``KeyboardInterrupt``) and the deadline reach it at once. The waiter then stops the
statement: ``interrupt`` (DuckDB's ``interrupt``, which returns promptly) and a stop event the
worker checks between result batches. An engine that cannot be interrupted mid-poll (DataFusion)
gets ``grace_s`` to finish; after that its thread is abandoned: it runs until its current poll
returns, then drops the stream, which cancels the engine's tasks. :func:`abandoned` counts the
statements whose waiter left while they still ran, so that a CLI can exit without waiting for them;
each statement's entry lives only while it runs (a long-lived process keeps nothing for the
statements that ended).

Whether the worker still runs is read from an event it sets as it ends, never from
``Thread.is_alive``: on CPython 3.11, Ctrl-C during ``Thread.join(timeout)`` releases the running
thread's own state lock (bpo-45274's fix), after which ``is_alive()`` says False while the
statement still runs; the process then finalised under a live DuckDB call and aborted (SIGABRT).
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

START_S = 1.0
"""How long a stopped waiter waits for a worker that a Ctrl-C inside ``Thread.start`` may have kept
from starting; a worker starting later finds the stop event set and runs nothing."""

_STATEMENTS: dict[threading.Event, bool] = {}
"""``done`` event of each supervised statement still running -> whether its waiter still waits.

Only plain stores, pops and one ``list(items())`` touch it (each a single step under the GIL, with
no Python code inside, so no Ctrl-C lands halfway through): the waiter flags its statement as left
with one store as it leaves, before anything a KeyboardInterrupt could cut short; the worker pops
its entry as it ends."""


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
    stop, started, done = threading.Event(), threading.Event(), threading.Event()
    out: list[tuple[bool, Any]] = []

    def body() -> None:
        started.set()
        try:
            if not stop.is_set():  # a waiter stopped before this thread ran: nothing to run
                out.append(_outcome(work, stop))
        finally:
            done.set()
            _STATEMENTS.pop(done, None)

    end = time.monotonic() + timeout_s
    _STATEMENTS[done] = True
    try:
        try:
            threading.Thread(target=body, name="idxlake-sql", daemon=True).start()
        except Exception:  # no thread ("can't start new thread"): nothing runs
            done.set()
            raise
        while not done.is_set():
            left = end - time.monotonic()
            if left <= 0:
                _stop(started, done, stop, interrupt, grace_s, out, why="its deadline")
                raise Expired()
            done.wait(min(POLL_S, left))
    except KeyboardInterrupt:
        _stop(started, done, stop, interrupt, grace_s, out, why="Ctrl-C")
        raise
    finally:
        _STATEMENTS[done] = False  # left: first, one store (a third Ctrl-C may land at any call after it)
        if done.is_set():  # ended already (its pop may have come before the store): nothing stays
            _STATEMENTS.pop(done, None)
    ok, value = out.pop()
    if not ok:
        raise value
    return value


def abandoned() -> int:
    """Statements still running whose waiter left :func:`supervise` (any thread's).

    A stopped DataFusion statement ends at its engine's next poll; one whose waiter a second
    Ctrl-C took out of :func:`supervise` ends when its engine honours the interrupt. Statements
    running under a waiter that is still waiting are not counted.
    """
    entries = list(_STATEMENTS.items())
    for done, _ in entries:
        if done.is_set():  # a stale entry of an ended statement (a Ctrl-C cut its waiter's cleanup short)
            _STATEMENTS.pop(done, None)
    return sum(1 for done, waiting in entries if not waiting and not done.is_set())


def _stop(started: threading.Event, done: threading.Event, stop: threading.Event,
          interrupt: Callable[[], None] | None, grace_s: float | None, out: list[Any], *, why: str) -> None:
    stop.set()
    if not started.wait(START_S):  # Ctrl-C inside Thread.start: no worker, or one that will run nothing
        done.set()
        return
    end = None if grace_s is None else time.monotonic() + grace_s
    while not done.is_set() and (end is None or time.monotonic() < end):
        if interrupt is not None:  # again each time: one sent before the engine started its statement is lost
            interrupt()
        done.wait(POLL_S if end is None else max(0.0, min(POLL_S, end - time.monotonic())))
    out.clear()  # the statement's error holds the engine's result: dropped, so its connection can close
    if not done.is_set():
        logger.info("the SQL engine did not stop within %.1f s of %s; its statement is left to end in "
                       "the background at its next poll (its memory stays within --memory-mb)", grace_s, why)


def _outcome(work: Callable[[threading.Event], Any], stop: threading.Event) -> tuple[bool, Any]:
    try:
        return True, work(stop)
    except BaseException as exc:  # re-raised in the caller's thread
        return False, exc
