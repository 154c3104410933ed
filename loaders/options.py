"""Validation of the loader's numeric and mode options (one place, one message style)."""

from __future__ import annotations

from idxlake.loaders.order import PHASES
from idxlake.schemas import LoaderConfigError


def check_options(*, batch_size: object, shuffle_buffer: object, cache_bytes: object, image_dtype: object,
                  lanes: object, prefetch_depth: object) -> None:
    """Check the options of ``DeltaIterableDataset``.

    Raises:
        LoaderConfigError: naming the option, what it got and what it accepts.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise LoaderConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if not isinstance(shuffle_buffer, int) or shuffle_buffer < 0:
        raise LoaderConfigError(f"shuffle_buffer must be an integer >= 0 (rows), got {shuffle_buffer!r}")
    if cache_bytes is not None and (not isinstance(cache_bytes, int) or cache_bytes < 0):
        raise LoaderConfigError(f"cache_bytes must be None or an integer >= 0, got {cache_bytes!r}")
    if isinstance(lanes, bool) or not isinstance(lanes, int) or lanes < PHASES or lanes % PHASES:
        raise LoaderConfigError(f"lanes must be a positive multiple of {PHASES}, got {lanes!r}")
    if isinstance(prefetch_depth, bool) or not isinstance(prefetch_depth, int) or prefetch_depth < 1:
        raise LoaderConfigError(f"prefetch_depth must be an integer >= 1, got {prefetch_depth!r}")
    if image_dtype not in ("uint8", "float32", "native"):
        raise LoaderConfigError(f"image_dtype must be 'uint8', 'float32' or 'native', got {image_dtype!r}")
