"""Validation of the loader's numeric and mode options (one place, one message style)."""

from __future__ import annotations

from collections.abc import Mapping

from idxlake.loaders.filters import INT64_MAX, INT64_MIN, MAX_BATCH_SIZE, MAX_WORLD_SIZE, check_int
from idxlake.schemas import LoaderConfigError, TableSnapshot, snapshot
from idxlake.schemas.versions import Timestamp

MAX_LANES = 1 << 16
"""Most lanes (each holds a window in memory)."""


def check_options(*, batch_size: object, shuffle_buffer: object, cache_bytes: object, seed: object,
                  version: object, world_size: object, image_dtype: object, lanes: object, phases: object,
                  prefetch_depth: object) -> None:
    """Check the options of ``DeltaIterableDataset`` against their limits (before numpy or delta-rs sees them).

    Raises:
        LoaderConfigError: naming the option, what it got and what it accepts.
    """
    check_int("batch_size", batch_size, low=1, high=MAX_BATCH_SIZE, limit="MAX_BATCH_SIZE")
    check_int("shuffle_buffer", shuffle_buffer, low=0, high=INT64_MAX // 2, limit="rows")
    if cache_bytes is not None:
        check_int("cache_bytes", cache_bytes, low=0, high=INT64_MAX // 2)
    check_int("seed", seed, low=INT64_MIN, high=2**64 - 1)
    if version is not None:
        check_int("version", version, low=0, high=INT64_MAX, limit="a Delta version")
    if world_size is not None:
        check_int("world_size", world_size, low=1, high=MAX_WORLD_SIZE, limit="MAX_WORLD_SIZE")
    p = check_int("phases", phases, low=1, high=MAX_LANES, limit="MAX_LANES")
    if check_int("lanes", lanes, low=1, high=MAX_LANES, limit="MAX_LANES") % p:
        raise LoaderConfigError(f"lanes must be a multiple of phases={phases}, got {lanes!r}")
    check_int("prefetch_depth", prefetch_depth, low=1, high=1024)
    if image_dtype not in ("uint8", "float32", "native"):
        raise LoaderConfigError(f"image_dtype must be 'uint8', 'float32' or 'native', got {image_dtype!r}")


def pin_snapshot(table: str | TableSnapshot, *, version: int | None, as_of: Timestamp | None,
                 storage_options: Mapping[str, str] | None) -> TableSnapshot:
    """The table version a dataset reads: ``table`` itself when pinned, else by ``version`` or ``as_of``.

    Raises:
        LoaderConfigError: ``as_of`` together with ``version`` or a pinned snapshot, or a snapshot of
            another version than ``version``.
        TableNotFoundError: no table, or no such version / no version at that time (the message names
            the table's range).
    """
    if as_of is not None and (version is not None or isinstance(table, TableSnapshot)):
        raise LoaderConfigError(f"as_of={as_of!r} pins a version by time: give it instead of version= "
                                "and with a table URI (not a TableSnapshot)")
    snap = table if isinstance(table, TableSnapshot) else snapshot(
        table, version=version, as_of=as_of, storage_options=storage_options)
    if version is not None and snap.version != version:
        raise LoaderConfigError(f"{snap.uri}: snapshot is version {snap.version}, version={version} was asked")
    return snap


ORDER_OPTIONS = frozenset({"batch_size", "drop_last", "image_dtype", "lanes", "phases", "plan", "seed", "shuffle",
                           "shuffle_buffer"})
"""Options fixed once a dataset is built: the order, the passes planned ahead and the workers' copies follow them."""


class FixedOptions:
    """Refuses to change an option of :data:`ORDER_OPTIONS` after it was first set.

    A changed ``seed`` used to apply only from the pass after next in the main process (the next
    one was planned ahead with the old seed), and never in persistent workers.
    """

    def __setattr__(self, name: str, value: object) -> None:
        if name in ORDER_OPTIONS and name in self.__dict__:
            raise LoaderConfigError(f"{type(self).__name__}.{name} cannot change once the dataset is built (the "
                                    f"order, the passes read ahead and the workers' copies follow it); build a "
                                    f"new dataset with {name}={value!r}")
        super().__setattr__(name, value)

    def __delattr__(self, name: str) -> None:
        if name in ORDER_OPTIONS:  # ``del ds.seed; ds.seed = 12`` would set it anew
            raise LoaderConfigError(f"{type(self).__name__}.{name} cannot be removed once the dataset is built")
        super().__delattr__(name)
