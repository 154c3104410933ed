"""The SQL statement supervisor: deadline and Ctrl-C reach the waiting thread, whatever the engine does."""

from __future__ import annotations

import _thread
import os
import signal
import threading
import time

import pytest

from idxlake.pipeline.inspect import interrupts
from idxlake.pipeline.inspect.interrupts import Expired, abandoned, supervise


def test_result_and_error_come_back_from_the_worker() -> None:
    assert supervise(lambda stop: threading.current_thread().name, timeout_s=5) == "idxlake-sql"

    def fails(stop: threading.Event) -> None:
        raise ValueError("engine said no")

    with pytest.raises(ValueError, match="engine said no"):
        supervise(fails, timeout_s=5)


def test_deadline_interrupts_the_engine_and_waits_for_it() -> None:
    """DuckDB-like: an interrupt that returns promptly, and no grace limit (the connection closes after)."""
    release = threading.Event()
    seen: list[bool] = []

    def statement(stop: threading.Event) -> None:
        release.wait(30)
        seen.append(stop.is_set())

    start = time.monotonic()
    with pytest.raises(Expired):
        supervise(statement, timeout_s=0.3, interrupt=release.set)
    assert 0.3 <= time.monotonic() - start < 3 and seen == [True]  # stopped, and joined before returning


def test_a_statement_that_never_yields_is_abandoned_after_the_grace() -> None:
    """DataFusion-like: no interrupt, inside one poll that ignores everything until it returns."""
    release = threading.Event()
    before = abandoned()
    start = time.monotonic()
    with pytest.raises(Expired):
        supervise(lambda stop: release.wait(30), timeout_s=0.2, grace_s=0.3)
    assert time.monotonic() - start < 3
    assert abandoned() == before + 1  # counted, so the CLI exits without waiting for it
    release.set()
    deadline = time.monotonic() + 10
    while abandoned() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert abandoned() == before


def test_ctrl_c_reaches_the_waiting_thread_at_once() -> None:
    """KeyboardInterrupt lands in the waiter's join, is passed on, and the worker is told to stop."""
    stopped = threading.Event()

    def statement(stop: threading.Event) -> None:
        stop.wait(30)
        stopped.set()

    threading.Timer(0.3, _thread.interrupt_main).start()
    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        supervise(statement, timeout_s=60, grace_s=5)
    assert time.monotonic() - start < 0.3 + 3 * interrupts.POLL_S + 1 and stopped.wait(5)


def test_ctrl_c_during_the_wait_still_waits_for_the_statement() -> None:
    """A real SIGINT in the waiter: on CPython 3.11 it lands in ``Thread.join(timeout)``, which then
    released the running worker's state lock, so ``is_alive()`` said False at once; the CLI exited
    with DuckDB still inside its statement and the process aborted (SIGABRT) during finalisation.
    """
    finished = threading.Event()

    def statement(stop: threading.Event) -> None:  # ignores stop, like DuckDB before its interrupt lands
        time.sleep(1.5)
        finished.set()

    threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
    with pytest.raises(KeyboardInterrupt):
        supervise(statement, timeout_s=60)
    assert finished.is_set() and abandoned() == 0  # waited for it (no grace limit), nothing left running


def test_a_second_ctrl_c_leaves_the_statement_counted_as_running() -> None:
    """Ctrl-C again while the waiter waits out the stop: the CLI must still see the statement running."""
    release = threading.Event()
    before = abandoned()

    def statement(stop: threading.Event) -> None:
        release.wait(30)

    threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()
    threading.Timer(0.6, os.kill, (os.getpid(), signal.SIGINT)).start()
    with pytest.raises(KeyboardInterrupt):
        supervise(statement, timeout_s=60)
    assert abandoned() == before + 1
    release.set()
    deadline = time.monotonic() + 10
    while abandoned() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert abandoned() == before


def test_a_stopped_statement_drops_its_result() -> None:
    """The worker's late outcome is not kept: a DuckDB error holding its result blocked closing the connection."""
    release = threading.Event()
    kept: list[object] = []

    def statement(stop: threading.Event) -> object:
        release.wait(30)
        value = object()
        kept.append(value)
        return value

    with pytest.raises(Expired) as info:
        supervise(statement, timeout_s=0.2, interrupt=release.set)
    frames = info.tb
    while frames is not None:
        out = frames.tb_frame.f_locals.get("out")
        assert not out, out
        frames = frames.tb_next
    assert len(kept) == 1


def test_an_interrupt_lost_before_the_statement_started_is_sent_again() -> None:
    """DuckDB's interrupt acts on the running statement only: one sent just before it started was lost."""
    calls: list[float] = []
    release = threading.Event()

    def interrupt() -> None:
        calls.append(time.monotonic())
        if len(calls) >= 3:  # the first two land before the engine runs anything
            release.set()

    with pytest.raises(Expired):
        supervise(lambda stop: release.wait(30), timeout_s=0.2, interrupt=interrupt)
    assert len(calls) == 3 and release.is_set()
