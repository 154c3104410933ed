"""Bounding a running SQL statement: a wall-clock deadline, and Ctrl-C that reaches an engine call.

DataFusion polls for signals while it runs, so an alarm signal stops it in the main thread.
DuckDB holds the calling thread in C++ until it returns, so the signal handler (and Ctrl-C) would
wait for the statement; it runs in a worker thread instead, and is stopped with its ``interrupt``.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")


class DeadlineAlarm(Exception):
    """Raised by the SIGALRM handler inside a DataFusion call."""


@contextmanager
def deadline(seconds: float, interrupt: Callable[[], None] | None = None) -> Iterator[threading.Event]:
    """Enforce a wall-clock limit on the block; yields an event set once it expired.

    In the main thread a SIGALRM handler raises inside the running engine call (DataFusion
    polls for signals while it waits). ``interrupt`` (e.g. DuckDB's) is called from a timer
    thread instead, from any thread.
    """
    expired, armed = threading.Event(), threading.Event()
    armed.set()
    use_signal = interrupt is None and threading.current_thread() is threading.main_thread() \
        and hasattr(signal, "setitimer")
    previous: Any = None
    timer: threading.Timer | None = None
    if use_signal:
        def on_alarm(signum: int, frame: object) -> None:
            if armed.is_set():  # a late signal after the block is ignored
                expired.set()
                raise DeadlineAlarm()

        previous = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, seconds)
    else:
        def on_timer() -> None:
            expired.set()
            if interrupt is not None:
                interrupt()

        timer = threading.Timer(seconds, on_timer)
        timer.daemon = True
        timer.start()
    try:
        yield expired
    finally:
        armed.clear()
        if use_signal:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        if timer is not None:
            timer.cancel()


def off_thread(interrupt: Callable[[], None], work: Callable[[], T]) -> T:
    """``work()`` in a thread, so that Ctrl-C reaches this one (a DuckDB call holds it) and interrupts it."""
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(_outcome(work)), name="idxlake-sql", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            thread.join(0.1)
    except KeyboardInterrupt:
        interrupt()
        thread.join()
        out.clear()  # the statement's error holds the engine's result: dropped, so its connection can close
        raise
    ok, value = out.pop()
    if not ok:
        raise value
    return value


def _outcome(work: Callable[[], Any]) -> tuple[bool, Any]:
    try:
        return True, work()
    except BaseException as exc:  # re-raised in the caller's thread
        return False, exc
