"""Mid-epoch resume: the pending resume of a dataset and the state shared with its workers.

A resume applies to exactly one pass: the next one over its epoch in the process that
loaded it. Two ways in:

* torchdata's ``StatefulDataLoader`` loads each worker's own state *in that worker*
  (and, with ``num_workers=0``, the dataset's state in the main process) just before the
  pass starts: the pass consumes it.
* ``load_state_dict`` called in the main process before a pass with DataLoader workers:
  the workers of the next pass inherit it (fork or pickle). The first of them to yield
  marks it used in :class:`SharedState`, and the main process drops its copy before it
  forks or pickles the workers of a later pass (:func:`settle_before_fork`). All workers
  of a pass are started before any of them is asked for a batch, so they all see it.

Nothing here writes the epoch: a resume never changes what ``set_epoch`` chose; it only
applies when its epoch is the one being iterated.
"""

from __future__ import annotations

import logging
import os
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from idxlake.loaders.filters import INT64_MAX, check_int
from idxlake.loaders.order import ORDER_ALGORITHM
from idxlake.loaders.shares import worker_batches
from idxlake.loaders.world import World
from idxlake.schemas import LoaderConfigError

logger = logging.getLogger(__name__)

UNKNOWN_PROGRESS = ("state_dict() in the main process cannot know how many batches DataLoader workers delivered: "
                    "use torchdata's StatefulDataLoader(...).state_dict(), or count this epoch's batches yourself "
                    "and resume with load_state_dict({'epoch': e, 'batches_consumed': k})")


@dataclass(frozen=True)
class Resume:
    """A pending resume.

    Attributes:
        epoch: The epoch it belongs to.
        start: The rank's batches consumed before the saved pass started.
        skip: Batches this consumer (worker) yielded in the saved pass.
        num_workers: Workers of the saved pass (``None``: any, for ``batches_consumed``).
        world_size: World size of the saved pass, if recorded.
        inherited: Loaded in the main process, to be inherited by the next pass's workers.
    """

    epoch: int
    start: int
    skip: int
    num_workers: int | None
    world_size: int | None
    inherited: bool


def parse_state(state: Mapping[str, Any], *, seed: int, version: int, lanes: int, phases: int, uri: str,
                inherited: bool) -> Resume:
    """A :class:`Resume` from a ``state_dict`` (a dataset's or a worker's) or ``{"epoch", "batches_consumed"}``.

    Raises:
        LoaderConfigError: the state is for another seed, table version, lane or phase count, was saved by a
            build with another order (a full state without this build's ``order``), or has no epoch.
    """
    for key, mine in (("seed", seed), ("version", version), ("lanes", lanes), ("phases", phases)):
        if key in state and state[key] != mine:
            raise LoaderConfigError(f"{uri}: cannot resume: state has {key} {state[key]}, this dataset {mine}")
    if "seed" in state and state.get("order") != ORDER_ALGORITHM:
        saved = repr(state["order"]) if state.get("order") else "of an earlier build"
        raise LoaderConfigError(
            f"{uri}: cannot resume: the state was saved with the epoch order {saved}, this build orders "
            f"epochs by {ORDER_ALGORITHM!r}: the same batch count would skip other rows; "
            "resume at the next epoch instead ({'epoch': e + 1, 'batches_consumed': 0})")
    if "epoch" not in state:
        raise LoaderConfigError("cannot resume: state has no 'epoch'")
    def count(key: str, default: object = 0) -> int:  # a negative count indexed from the end: more batches
        return check_int(f"{uri}: cannot resume: state {key!r}", state.get(key, default), low=0, high=INT64_MAX)

    if state.get("batches_consumed") is not None:
        start, skip, workers = count("batches_consumed"), 0, None
    else:
        start, skip, workers = count("start"), count("yielded"), state.get("num_workers")
    world_size = state.get("world_size")
    return Resume(count("epoch"), start, skip, None if workers is None else count("num_workers"),
                  None if world_size is None else count("world_size"), inherited)


def state_of(world: World, *, epoch: int, resume: Resume | None, progress: Any, seed: int, version: int,
             lanes: int, phases: int) -> dict[str, Any]:
    """A consumer's ``state_dict``: where it stands in ``epoch`` (a pending resume of that epoch, else
    the progress of its pass over it, else the start), with what the state is only valid for."""
    start = yielded = 0
    if resume is not None and resume.epoch == epoch:
        start, yielded = resume.start, resume.skip
    elif progress is not None and progress.epoch == epoch:
        start, yielded = progress.start, progress.yielded
    return {"epoch": epoch, "seed": seed, "version": version, "order": ORDER_ALGORITHM, "lanes": lanes,
            "phases": phases, "rank": world.rank, "world_size": world.world_size, "worker": world.worker,
            "num_workers": world.num_workers, "start": start, "yielded": yielded,
            "batches_consumed": start + yielded if world.num_workers == 1 else None}


def applies(resume: Resume, *, world: World, epoch: int, batches: int, where: str) -> bool:
    """Whether ``resume`` applies to a pass over ``epoch`` (of ``batches`` rank batches) by ``world``.

    A resume for another epoch does not (a warning says so unless that epoch was finished).

    Raises:
        LoaderConfigError: it is for this epoch but was saved with another number of workers or ranks.
    """
    if resume.epoch != epoch:
        left = len(worker_batches(batches, worker=world.worker, num_workers=world.num_workers,
                                  start=resume.start)) - resume.skip
        if left > 0:
            logger.warning("%s: resume state for epoch %d ignored: iterating epoch %d (call set_epoch(%d) "
                           "to resume it)", where, resume.epoch, epoch, resume.epoch)
        return False
    for key, saved, now in (("num_workers", resume.num_workers, world.num_workers),
                            ("world_size", resume.world_size, world.world_size)):
        if saved is not None and saved != now:
            raise LoaderConfigError(f"cannot resume: state was saved with {key}={saved}, now {key}={now}")
    mine = len(worker_batches(batches, worker=world.worker, num_workers=world.num_workers, start=min(resume.start,
                                                                                                   batches)))
    if resume.start > batches or resume.skip > mine:
        raise LoaderConfigError(
            f"{where}: cannot resume epoch {epoch}: the state has {resume.start + resume.skip} batches consumed, "
            f"but this rank has {batches} per epoch (a state of another selection, batch size or world size?); "
            f"resume at the next epoch instead ({{'epoch': {epoch + 1}, 'batches_consumed': 0}})")
    return True


def check_reaches_workers(resume: Resume | None, *, epoch: int, started: bool, uri: str) -> None:
    """Refuse a pass over ``epoch`` by persistent workers that started before (``started``) while a resume
    for it that skips something is pending in the main process: they took the dataset when they started,
    and cannot see it (or, if an abandoned pass took it before yielding anything, dropped it).

    Raises:
        LoaderConfigError: so; the rows it would skip would be yielded again.
    """
    if started and resume is not None and resume.inherited and resume.epoch == epoch and (resume.start or resume.skip):
        raise LoaderConfigError(
            f"{uri}: cannot resume epoch {epoch}: this DataLoader's persistent workers are running and the resume "
            "loaded with load_state_dict() cannot reach them; load it before the loader's first iteration, or make "
            "a new DataLoader")


class SharedState:
    """Three numbers in shared memory, seen by the main process and all its DataLoader workers
    (persistent ones included): the epoch, whether the main process's resume was used by a
    worker, and whether workers started a pass since the main process last set the epoch,
    loaded a state or iterated."""

    def __init__(self) -> None:
        self._t = torch.zeros(3, dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        """The epoch set in the main process."""
        return int(self._t[0])

    @epoch.setter
    def epoch(self, value: int) -> None:  # a non-negative integer: the order's random streams take no negatives
        self._t[0] = check_int("set_epoch: epoch", value, low=0, high=INT64_MAX)

    @property
    def resume_used(self) -> bool:
        """A worker used the resume loaded in the main process."""
        return bool(self._t[1])

    @resume_used.setter
    def resume_used(self, value: bool) -> None:
        self._t[1] = int(value)

    @property
    def workers_read(self) -> bool:
        """Workers started a pass since the main process last set the epoch, loaded a state or iterated."""
        return bool(self._t[2])

    @workers_read.setter
    def workers_read(self, value: bool) -> None:
        self._t[2] = int(value)


class _Settles(Protocol):
    def settle_resume(self) -> None: ...


_PENDING: weakref.WeakSet[_Settles] = weakref.WeakSet()


def watch(dataset: _Settles) -> None:
    """Have ``dataset.settle_resume()`` run in this process before every fork."""
    _PENDING.add(dataset)


def settle_before_fork() -> None:
    """Let every watched dataset drop a resume its workers used, before a fork copies it."""
    for dataset in list(_PENDING):
        dataset.settle_resume()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(before=settle_before_fork)
