"""Drop-in names for torchvision users: ``MNIST``, ``FashionMNIST``, ``KMNIST``, ``EMNIST`` over a table.

``torchvision.datasets.MNIST(root, train=True, transform=...)`` becomes
``idxlake.MNIST(table, train=True, transform=...)``: the same ``(PIL image, int)`` samples,
``.data``, ``.targets``, ``.classes``, read from a table written by ``idxlake ingest``. Each
name checks that the table holds its dataset (the dataset name in the table metadata).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from idxlake.loaders.mapstyle import DEFAULT_MAX_BYTES, DeltaImageDataset, ImageType
from idxlake.loaders.options import pin_snapshot
from idxlake.schemas import DATASETS, LoaderConfigError, TableSnapshot
from idxlake.schemas.versions import Timestamp

EMNIST_SPLITS: tuple[str, ...] = ("byclass", "bymerge", "balanced", "letters", "digits", "mnist")
"""torchvision's EMNIST ``split`` names; the table's dataset is ``emnist-<split>``."""


def _title(name: str) -> str:
    spec = DATASETS.get(name)
    return f"{name!r} ({spec.title})" if spec is not None else repr(name)


def check_dataset(snap: TableSnapshot, expected: str, constructor: str) -> None:
    """Raise unless the table at ``snap`` holds the registered dataset ``expected``.

    Raises:
        LoaderConfigError: naming what the table holds and what was expected.
    """
    held = snap.meta.dataset
    if held == expected:
        return
    known = {"mnist": "idxlake.MNIST", "fashion-mnist": "idxlake.FashionMNIST", "kmnist": "idxlake.KMNIST"}
    hint = (f"{known[held]}(table)" if held in known
            else f"idxlake.EMNIST(table, split={held.removeprefix('emnist-')!r})" if held.startswith("emnist-")
            else "idxlake.DeltaImageDataset(table)")
    raise LoaderConfigError(
        f"{snap.uri}@v{snap.version}: {constructor} needs a table of {_title(expected)}, but this table holds "
        f"{_title(held)}; read it with {hint}, or ingest {expected} into another table "
        f"(idxlake ingest SOURCE TABLE --dataset {expected})")


def _keyword_options(name: str, positional: tuple[object, ...]) -> None:
    """torchvision takes ``train`` (and more) positionally; here options are keywords: say so, naming the class."""
    if positional:
        example = (f"idxlake.{name}(table, split='digits', train=False)" if name == "EMNIST"
                   else f"idxlake.{name}(table, train=False)")
        raise TypeError(f"idxlake.{name}() takes the table as its only positional argument, got "
                        f"{1 + len(positional)} positional arguments; pass the options by keyword, e.g. {example}")


class _Named(DeltaImageDataset):
    """A :class:`DeltaImageDataset` over the ``train`` or ``test`` split of one registered dataset."""

    DATASET: ClassVar[str] = ""

    def __init__(self, table: str | TableSnapshot, *positional: object, train: bool = True,
                 transform: Callable[[Any], Any] | None = None,
                 target_transform: Callable[[Any], Any] | None = None, version: int | None = None,
                 storage_options: Mapping[str, str] | None = None, image_type: ImageType = "pil",
                 max_bytes: int = DEFAULT_MAX_BYTES, as_of: Timestamp | None = None) -> None:
        _keyword_options(type(self).__name__, positional)
        self._init_named(table, self.DATASET, train=train, transform=transform, target_transform=target_transform,
                         version=version, storage_options=storage_options, image_type=image_type,
                         max_bytes=max_bytes, as_of=as_of)

    def _init_named(self, table: str | TableSnapshot, dataset: str, *, train: bool,
                    transform: Callable[[Any], Any] | None, target_transform: Callable[[Any], Any] | None,
                    version: int | None, storage_options: Mapping[str, str] | None, image_type: ImageType,
                    max_bytes: int, as_of: Timestamp | None = None) -> None:
        snap = pin_snapshot(table, version=version, as_of=as_of, storage_options=storage_options)
        check_dataset(snap, dataset, f"idxlake.{type(self).__name__}")
        self.train = bool(train)
        super().__init__(snap, split="train" if train else "test", transform=transform,
                         target_transform=target_transform, version=version, image_type=image_type,
                         max_bytes=max_bytes)


TORCHVISION_MNIST_CLASSES: tuple[str, ...] = ("0 - zero", "1 - one", "2 - two", "3 - three", "4 - four", "5 - five",
                                               "6 - six", "7 - seven", "8 - eight", "9 - nine")
"""``torchvision.datasets.MNIST.classes`` (its EMNIST ``mnist`` and ``digits`` splits use ``"0"``...``"9"``)."""


class MNIST(_Named):
    """``torchvision.datasets.MNIST`` over an idxlake table of MNIST (``train=True``: 60000 rows,
    ``False``: 10000). See :class:`DeltaImageDataset` for the arguments."""

    DATASET = "mnist"

    @property
    def classes(self) -> list[str]:
        """torchvision's names (``"0 - zero"``...) for the table's digits ``"0"``...``"9"`` (``meta.class_names``);
        a table that names its classes otherwise keeps its own names."""
        names = super().classes
        return list(TORCHVISION_MNIST_CLASSES) if names == [str(i) for i in range(10)] else names


class FashionMNIST(_Named):
    """``torchvision.datasets.FashionMNIST`` over an idxlake table of Fashion-MNIST."""

    DATASET = "fashion-mnist"


class KMNIST(_Named):
    """``torchvision.datasets.KMNIST`` over an idxlake table of Kuzushiji-MNIST."""

    DATASET = "kmnist"


class EMNIST(_Named):
    """``torchvision.datasets.EMNIST(split=...)`` over an idxlake table of that EMNIST variant.

    Images are upright, as torchvision's (ingest stores EMNIST's transposed records upright).

    Args:
        table: Table path or URI, or a pinned :class:`~idxlake.schemas.TableSnapshot`.
        split: One of :data:`EMNIST_SPLITS` (required, by keyword); the table must hold ``emnist-<split>``.
        train: The ``train`` split, else ``test``.

    Raises:
        TypeError: no ``split``, or options passed positionally.
        LoaderConfigError: an unknown ``split``, or a table of another dataset.
    """

    def __init__(self, table: str | TableSnapshot, *positional: object, split: str | None = None, train: bool = True,
                 transform: Callable[[Any], Any] | None = None,
                 target_transform: Callable[[Any], Any] | None = None, version: int | None = None,
                 storage_options: Mapping[str, str] | None = None, image_type: ImageType = "pil",
                 max_bytes: int = DEFAULT_MAX_BYTES, as_of: Timestamp | None = None) -> None:
        _keyword_options("EMNIST", positional)
        if split is None:
            raise TypeError(f"idxlake.EMNIST() needs split=, one of {list(EMNIST_SPLITS)}")
        if split not in EMNIST_SPLITS:
            raise LoaderConfigError(f"EMNIST split must be one of {list(EMNIST_SPLITS)}, got {split!r}")
        self.split = split
        self._init_named(table, f"emnist-{split}", train=train, transform=transform,
                         target_transform=target_transform, version=version, storage_options=storage_options,
                         image_type=image_type, max_bytes=max_bytes, as_of=as_of)
