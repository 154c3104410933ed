"""Finding IDX source files: naming conventions, image/label pairing per split, the bundled MNIST.

Recognised names (case-insensitive, ``.gz`` optional)::

    [prefix]train-images-idx3-ubyte      [prefix]train-labels-idx1-ubyte
    [prefix]t10k-images.idx3-ubyte       [prefix]test-labels_idx1_ubyte
    emnist-letters-train-images-idx3-ubyte.gz ...

``t10k`` and ``test`` both mean the ``test`` split. macOS resource forks
(``._*``), hidden files and anything else are ignored.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from idxlake.schemas import DATASETS, SourceError

logger = logging.getLogger(__name__)

_NAME = re.compile(
    r"^(?P<prefix>.*?)(?P<split>train|t10k|test)[-_.](?P<kind>images|labels)[-_.]idx(?P<ndim>\d+)[-_.]ubyte"
    r"(?P<gz>\.gz)?$", re.IGNORECASE)
_SPLITS = {"train": "train", "t10k": "test", "test": "test"}


@dataclass(frozen=True)
class SplitSource:
    """The image and label files of one split.

    Attributes:
        split: ``"train"`` or ``"test"``.
        images: Path of the images file.
        labels: Path of the labels file.
        prefix: File-name prefix (e.g. ``"emnist-letters-"``), empty for MNIST naming.
    """

    split: str
    images: Path
    labels: Path
    prefix: str = ""


def bundled_mnist() -> Path:
    """Directory of the real MNIST files shipped inside the package (the default source)."""
    return Path(str(resources.files("idxlake.pipeline") / "data" / "mnist"))


def parse_name(name: str) -> tuple[str, str, str] | None:
    """Classify a file name.

    Returns:
        ``(prefix, split, kind)`` with kind ``"images"``/``"labels"``, or ``None`` if not an IDX name.
    """
    if name.startswith("."):
        return None
    m = _NAME.match(name)
    if not m:
        return None
    return m["prefix"].lower(), _SPLITS[m["split"].lower()], m["kind"].lower()


def discover(source: str | Path | Sequence[str | Path], *, dataset: str | None = None) -> dict[str, SplitSource]:
    """Find and pair the IDX files of each split.

    Args:
        source: A directory, or explicit files.
        dataset: Registered dataset name; restricts a directory holding several EMNIST
            variants to that variant's prefix.

    Returns:
        Split name -> :class:`SplitSource`, sorted by split name.

    Raises:
        SourceError: when nothing is found, a split lacks its images or labels, or the
            files mix several datasets.
    """
    paths: list[Path]
    if isinstance(source, (str, Path)):
        root = Path(source)
        if not root.exists():
            raise SourceError(f"{root}: no such file or directory")
        paths = sorted(p for p in root.iterdir() if p.is_file()) if root.is_dir() else [root]
        where = str(root)
    else:
        paths = [Path(p) for p in source]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise SourceError(f"no such file(s): {', '.join(missing)}")
        where = ", ".join(p.name for p in paths)
    wanted_prefix = DATASETS[dataset].file_prefix if dataset in DATASETS else None
    found: dict[tuple[str, str, str], Path] = {}
    for path in paths:
        parsed = parse_name(path.name)
        if parsed is None:
            logger.debug("ignoring %s: not an IDX file name", path)
            continue
        if wanted_prefix and parsed[0] != wanted_prefix:
            logger.debug("ignoring %s: not part of %s", path, dataset)
            continue
        if parsed in found:
            keep = min(found[parsed], path, key=lambda p: (p.suffix != ".gz", p.name))
            logger.warning("both %s and %s found; using %s", found[parsed].name, path.name, keep.name)
            path = keep
        found[parsed] = path
    if not found:
        raise SourceError(
            f"{where}: no IDX files found; expected names like train-images-idx3-ubyte[.gz] and "
            "t10k-labels-idx1-ubyte[.gz]")
    prefixes = sorted({p for p, _, _ in found})
    if len(prefixes) > 1:
        raise SourceError(
            f"{where}: files of several datasets (prefixes {prefixes}); pass --dataset or explicit files")
    splits: dict[str, SplitSource] = {}
    for split in sorted({s for _, s, _ in found}):
        images = found.get((prefixes[0], split, "images"))
        labels = found.get((prefixes[0], split, "labels"))
        if images is None or labels is None:
            have = images or labels
            need = "labels" if labels is None else "images"
            raise SourceError(f"{where}: split {split!r} has {have.name if have else '?'} but no {need} file")
        splits[split] = SplitSource(split, images, labels, prefixes[0])
    return splits
