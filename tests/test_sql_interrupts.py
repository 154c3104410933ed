"""The SQL statement supervisor: deadline and Ctrl-C reach the waiting thread, whatever the engine does."""

from __future__ import annotations

import _thread
import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest

from idxlake.pipeline.inspect import interrupts
from idxlake.pipeline.inspect.interrupts import Expired, abandoned, supervise


@contextlib.contextmanager
def _sigints(*delays: float) -> Iterator[None]:
    """Real SIGINTs to this process after ``delays`` seconds; any not yet sent when the block ends are
    cancelled, so a supervisor that returns early fails its test instead of interrupting pytest."""
    timers = [threading.Timer(delay, os.kill, (os.getpid(), signal.SIGINT)) for delay in delays]
    for timer in timers:
        timer.start()
    try:
        yield
    finally:
        for timer in timers:
            timer.cancel()


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

    with _sigints(0.3), pytest.raises(KeyboardInterrupt):
        supervise(statement, timeout_s=60)
    assert finished.is_set() and abandoned() == 0  # waited for it (no grace limit), nothing left running


def test_a_second_ctrl_c_leaves_the_statement_counted_as_running() -> None:
    """Ctrl-C again while the waiter waits out the stop: the CLI must still see the statement running."""
    release = threading.Event()
    before = abandoned()

    def statement(stop: threading.Event) -> None:
        release.wait(30)

    with _sigints(0.2, 0.6), pytest.raises(KeyboardInterrupt):
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


def test_statements_that_end_in_time_leave_nothing_recorded() -> None:
    """A long-lived process (a notebook calling ``query``) keeps no entry per statement."""
    for _ in range(200):
        supervise(lambda stop: None, timeout_s=5)
    with pytest.raises(Expired):
        supervise(lambda stop: time.sleep(0.3), timeout_s=0.05, interrupt=lambda: None)
    assert not interrupts._STATEMENTS and abandoned() == 0


def test_a_statement_still_under_its_waiter_is_not_abandoned() -> None:
    """Another thread's statement, waited on normally, is not counted (the CLI would skip finalising)."""
    release, running = threading.Event(), threading.Event()

    def statement(stop: threading.Event) -> None:
        running.set()
        release.wait(30)

    waiter = threading.Thread(target=supervise, args=(statement,), kwargs={"timeout_s": 60})
    waiter.start()
    try:
        assert running.wait(5)
        assert abandoned() == 0
    finally:
        release.set()
        waiter.join(10)


def test_abandoned_can_be_read_while_other_threads_supervise() -> None:
    errors: list[BaseException] = []

    def churn() -> None:
        try:
            for _ in range(300):
                supervise(lambda stop: None, timeout_s=5)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=churn) for _ in range(4)]
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        assert abandoned() == 0
    assert not errors


def test_a_thread_that_cannot_start_is_not_counted_as_running(monkeypatch) -> None:
    def refuse(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", refuse)
    with pytest.raises(RuntimeError, match="can't start new thread"):
        supervise(lambda stop: None, timeout_s=5)
    monkeypatch.undo()
    assert abandoned() == 0


@pytest.mark.parametrize("started", [True, False])
def test_ctrl_c_inside_thread_start_still_stops_the_statement(monkeypatch, started: bool) -> None:
    """Ctrl-C between creating the worker and entering the wait: the statement is stopped (or never
    runs), never left to run past its deadline unsupervised."""
    start = threading.Thread.start
    ran, interrupted = threading.Event(), threading.Event()

    def start_then_ctrl_c(self: threading.Thread) -> None:
        if started:
            start(self)
            assert ran.wait(5)  # the statement runs when Ctrl-C lands
        raise KeyboardInterrupt

    def statement(stop: threading.Event) -> None:
        ran.set()
        interrupted.wait(30)

    monkeypatch.setattr(threading.Thread, "start", start_then_ctrl_c)
    began = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        supervise(statement, timeout_s=60, interrupt=interrupted.set)
    monkeypatch.undo()
    assert time.monotonic() - began < interrupts.START_S + 2
    assert interrupted.is_set() == started and ran.is_set() == started
    assert abandoned() == 0


def test_a_worker_that_starts_after_its_waiter_gave_up_runs_nothing(monkeypatch) -> None:
    """Ctrl-C inside ``Thread.start`` before the thread ran, and the thread starting only after the
    waiter stopped waiting for it: nobody would interrupt its statement, so it must not run."""
    start = threading.Thread.start
    late: list[threading.Thread] = []
    ran = threading.Event()

    def start_late(self: threading.Thread) -> None:
        late.append(self)
        def later() -> None:  # a raw thread: threading.Timer would call the patched start
            time.sleep(interrupts.START_S + 0.5)
            start(self)

        _thread.start_new_thread(later, ())
        raise KeyboardInterrupt

    monkeypatch.setattr(threading.Thread, "start", start_late)
    with pytest.raises(KeyboardInterrupt):
        supervise(lambda stop: ran.set(), timeout_s=60)
    monkeypatch.undo()
    deadline = time.monotonic() + 10
    while not (late[0].ident and not late[0].is_alive()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert late[0].ident and not late[0].is_alive() and not ran.is_set()
    assert abandoned() == 0 and not interrupts._STATEMENTS


class _CtrlCAfterLeaving(dict):
    """The waiter's first store as it leaves, then a Ctrl-C at the next step (a third Ctrl-C)."""

    def __setitem__(self, key: object, value: object) -> None:
        super().__setitem__(key, value)
        if value is False:
            raise KeyboardInterrupt


def test_a_ctrl_c_as_the_waiter_leaves_still_leaves_the_statement_counted(monkeypatch) -> None:
    release = threading.Event()
    monkeypatch.setattr(interrupts, "_STATEMENTS", _CtrlCAfterLeaving())
    with pytest.raises(KeyboardInterrupt):
        supervise(lambda stop: release.wait(30), timeout_s=0.1, grace_s=0.1)
    assert abandoned() == 1  # still running: the CLI must not finalise under it
    release.set()
    deadline = time.monotonic() + 10
    while abandoned() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert abandoned() == 0 and not interrupts._STATEMENTS
