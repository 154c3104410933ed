"""Registry of the IDX datasets idxlake knows by name (MNIST and its family).

One place holds, per dataset: file names per split, split sizes, record shape,
class names, orientation quirks (EMNIST is stored transposed) and the known hashes
used to report whether an ingest is verified official data.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field

GENERIC = "generic"
"""Dataset name used for IDX data that matches no registered dataset."""


@dataclass(frozen=True)
class SplitFiles:
    """The two files of one split and what is known about them.

    Attributes:
        images: Canonical file name of the images (``.gz``).
        labels: Canonical file name of the labels (``.gz``).
        rows: Number of records.
        images_md5: md5 of the canonical ``.gz`` bytes, if published.
        labels_md5: md5 of the canonical ``.gz`` bytes, if published.
        images_sha256: sha256 of the uncompressed IDX payload, if known.
        labels_sha256: sha256 of the uncompressed IDX payload, if known.
    """

    images: str
    labels: str
    rows: int
    images_md5: str | None = None
    labels_md5: str | None = None
    images_sha256: str | None = None
    labels_sha256: str | None = None


@dataclass(frozen=True)
class DatasetSpec:
    """A known IDX dataset.

    Attributes:
        name: Registry key, e.g. ``"mnist"``.
        title: Human name.
        shape: Shape of one image record.
        class_names: Label value ``i`` has name ``class_names[i]``.
        splits: Split name (``train``/``test``) -> its files.
        transposed: True when the source stores each image transposed (EMNIST); ingest
            fixes the orientation and export restores the source bytes.
        citation: Credit line for the README / table description.
    """

    name: str
    title: str
    shape: tuple[int, ...]
    class_names: tuple[str, ...]
    splits: dict[str, SplitFiles]
    transposed: bool = False
    citation: str = ""
    file_prefix: str = field(default="")

    @property
    def num_classes(self) -> int:
        """Number of classes (labels are ``0 .. num_classes - 1``)."""
        return len(self.class_names)


def _mnist_like(prefix: str, rows: tuple[int, int], md5s: tuple[str | None, ...] = (None,) * 4,
                sha256s: tuple[str | None, ...] = (None,) * 4) -> dict[str, SplitFiles]:
    train_rows, test_rows = rows
    return {
        "train": SplitFiles(f"{prefix}train-images-idx3-ubyte.gz", f"{prefix}train-labels-idx1-ubyte.gz",
                            train_rows, md5s[0], md5s[1], sha256s[0], sha256s[1]),
        "test": SplitFiles(f"{prefix}{'test' if prefix else 't10k'}-images-idx3-ubyte.gz",
                           f"{prefix}{'test' if prefix else 't10k'}-labels-idx1-ubyte.gz",
                           test_rows, md5s[2], md5s[3], sha256s[2], sha256s[3]),
    }


_DIGITS = tuple(string.digits)
_EMNIST_CITE = "G. Cohen, S. Afshar, J. Tapson, A. van Schaik: EMNIST (2017), CC0"
_EMNIST_BALANCED = _DIGITS + tuple(string.ascii_uppercase) + tuple("abdefghnqrt")


def _emnist(variant: str, classes: tuple[str, ...], rows: tuple[int, int]) -> DatasetSpec:
    prefix = f"emnist-{variant}-"
    return DatasetSpec(
        name=f"emnist-{variant}", title=f"EMNIST {variant}", shape=(28, 28), class_names=classes,
        splits=_mnist_like(prefix, rows), transposed=True, citation=_EMNIST_CITE, file_prefix=prefix,
    )


DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        name="mnist", title="MNIST", shape=(28, 28), class_names=_DIGITS,
        splits=_mnist_like("", (60000, 10000),
                           md5s=("f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcbcd1e9432",
                                 "9fb629c4189551a2d022fa330f9573f3", "ec29112dd5afa0611ce80d1b7f02629c"),
                           sha256s=("ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
                                    "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
                                    "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
                                    "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2")),
        citation="Y. LeCun, C. Cortes, C. J. C. Burges: The MNIST database, CC BY-SA 3.0",
    ),
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist", title="Fashion-MNIST", shape=(28, 28),
        class_names=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                     "Sneaker", "Bag", "Ankle boot"),
        splits=_mnist_like("", (60000, 10000),
                           md5s=("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe",
                                 "bef4ecab320f06d8554ea6380940ec79", "bb300cfdad3c16e7a12a480ee83cd310")),
        citation="H. Xiao, K. Rasul, R. Vollgraf: Fashion-MNIST (Zalando Research), MIT",
    ),
    "kmnist": DatasetSpec(
        name="kmnist", title="Kuzushiji-MNIST", shape=(28, 28),
        class_names=("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
        splits=_mnist_like("", (60000, 10000),
                           md5s=("bdb82020997e1d708af4cf47b453dcf7", "e144d726b3acfaa3e44228e80efcd344",
                                 "5c965bf0a639b31b8f53240b1b52f4d7", "7320c461ea6c1c855c0b718fb2a4b134")),
        citation="T. Clanuwat et al.: Deep Learning for Classical Japanese Literature (ROIS-DS CODH), CC BY-SA 4.0",
    ),
    "emnist-balanced": _emnist("balanced", _EMNIST_BALANCED, (112800, 18800)),
    "emnist-byclass": _emnist("byclass", _DIGITS + tuple(string.ascii_uppercase + string.ascii_lowercase),
                              (697932, 116323)),
    "emnist-bymerge": _emnist("bymerge", _EMNIST_BALANCED, (697932, 116323)),
    "emnist-digits": _emnist("digits", _DIGITS, (240000, 40000)),
    # EMNIST letters labels run 1..26; 0 is unused.
    "emnist-letters": _emnist("letters", ("N/A", *string.ascii_lowercase), (124800, 20800)),
    "emnist-mnist": _emnist("mnist", _DIGITS, (60000, 10000)),
}
"""Dataset name -> :class:`DatasetSpec`; the single registry of known datasets."""


def get_dataset(name: str) -> DatasetSpec:
    """Return the registered dataset ``name``.

    Raises:
        KeyError: naming the known datasets when ``name`` is unknown.
    """
    try:
        return DATASETS[name]
    except KeyError:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))} "
                       f"(or {GENERIC!r} for any IDX data)") from None
