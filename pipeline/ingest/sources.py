"""Finding IDX source files: naming conventions, image/label pairing per split, the bundled MNIST.

Recognised names (case-insensitive, ``.gz`` optional)::

    [prefix]train-images-idx3-ubyte      [prefix]train-labels-idx1-ubyte
    [prefix]t10k-images.idx3-ubyte       [prefix]test-labels_idx1_ubyte
    emnist-letters-train-images-idx3-ubyte.gz ...

``t10k`` and ``test`` both mean the ``test`` split. macOS resource forks
(``._*``), hidden files and anything else are ignored.

A source on an object store (``s3://``, ``az://``, ``abfss://``, ``gs://``) is listed and read
through the storage layer's pyarrow filesystem (:func:`idxlake.schemas.pyarrow_filesystem`):
its IDX files are streamed (1 MiB at a time) into a private temporary directory, which lives as
long as the returned :class:`SplitSource` objects. Databricks paths (``/Volumes``, ``/dbfs``,
``dbfs:/``) are local files.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path

import pyarrow.fs as pafs

from idxlake.schemas import DATASETS, SourceError, check_options, fs_path, normalize, pyarrow_filesystem, store_of

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
        staged: The temporary directory holding a remote source's files (removed with the last reference).
    """

    split: str
    images: Path
    labels: Path
    prefix: str = ""
    staged: tempfile.TemporaryDirectory[str] | None = field(default=None, repr=False, compare=False)


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


def is_remote(source: str | Path | Sequence[str | Path]) -> bool:
    """True when ``source`` (or its first file) is on an object store rather than a local path."""
    first = source if isinstance(source, (str, Path)) else next(iter(source), "")
    return isinstance(first, str) and store_of(first).name != "local"


def source_options(source: str | Path | Sequence[str | Path] | None, table: str,
                   table_options: Mapping[str, str] | None,
                   given: Mapping[str, str] | None) -> Mapping[str, str] | None:
    """The storage options for reading ``source``: ``given``, else the table's when on the same store.

    Raises:
        StorageConfigError: ``table_options`` do not fit the table's store (checked before any source is read).
    """
    check_options(table, table_options)
    if given is not None or source is None or not is_remote(source):
        return given
    first = str(source if isinstance(source, (str, Path)) else next(iter(source)))
    return table_options if store_of(first) == store_of(table) else None


def stage(source: str | Sequence[str], storage_options: Mapping[str, str] | None,
          into: Path) -> Path | list[Path]:
    """Stream a remote source's IDX files into ``into``; returns the local directory or files.

    Raises:
        SourceError: nothing at ``source``.
    """
    uris = [source] if isinstance(source, str) else list(source)
    fs, _ = pyarrow_filesystem(uris[0], storage_options)
    wanted: list[str] = []
    for uri in uris:
        if store_of(uri) != store_of(uris[0]):
            raise SourceError(f"{uri}: source files must all be on one store (the first is {uris[0]})")
        path = fs_path(uri)
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise SourceError(f"{uri}: no such file or directory")
        if info.type == pafs.FileType.Directory:
            wanted += [i.path for i in fs.get_file_info(pafs.FileSelector(path))
                       if i.type == pafs.FileType.File and parse_name(i.base_name) is not None]
        else:
            wanted.append(path)
    for path in wanted:
        with fs.open_input_stream(path) as src, open(into / path.rsplit("/", 1)[-1], "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
    logger.info("staged %d source file(s) from %s", len(wanted), ", ".join(uris))
    return into if isinstance(source, str) else [into / p.rsplit("/", 1)[-1] for p in wanted]


def discover(source: str | Path | Sequence[str | Path], *, dataset: str | None = None,
             storage_options: Mapping[str, str] | None = None) -> dict[str, SplitSource]:
    """Find and pair the IDX files of each split.

    Args:
        source: A directory, or explicit files: local paths or URIs on one object store.
        dataset: Registered dataset name; restricts a directory holding several EMNIST
            variants to that variant's prefix.
        storage_options: Options for a remote source's store (delta-rs style keys).

    Returns:
        Split name -> :class:`SplitSource`, sorted by split name.

    Raises:
        SourceError: when nothing is found, a split lacks its images or labels, or the
            files mix several datasets.
    """
    if is_remote(source):
        staged = tempfile.TemporaryDirectory(prefix="idxlake-source-")
        where = str(source) if isinstance(source, (str, Path)) else ", ".join(map(str, source))
        try:
            local = discover(stage(source, storage_options, Path(staged.name)), dataset=dataset)  # type: ignore[arg-type]
        except SourceError as exc:
            staged.cleanup()
            raise SourceError(str(exc).replace(staged.name, where)) from None
        return {k: replace(v, staged=staged) for k, v in local.items()}
    if isinstance(source, str):
        source = normalize(source)
    paths: list[Path]
    if isinstance(source, (str, Path)):
        root = Path(source)
        if not root.exists():
            raise SourceError(f"{root}: no such file or directory")
        paths = sorted(p for p in root.iterdir() if p.is_file()) if root.is_dir() else [root]
        where = str(root)
    else:
        paths = [Path(p) for p in source]
        folders = [str(p) for p in paths if p.is_dir()]
        if folders:
            raise SourceError(f"{', '.join(folders)}: directories among several sources; give one source directory, "
                              "or the files themselves")
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
