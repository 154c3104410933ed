"""Source discovery: naming variants, pairing, junk files, ambiguity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from idxlake.pipeline import write_idx
from idxlake.pipeline.ingest.sources import bundled_mnist, discover, parse_name
from idxlake.schemas import SourceError


@pytest.mark.parametrize(("name", "expected"), [
    ("train-images-idx3-ubyte.gz", ("", "train", "images")),
    ("train-images-idx3-ubyte", ("", "train", "images")),
    ("train-images.idx3-ubyte", ("", "train", "images")),
    ("t10k-labels.idx1-ubyte", ("", "test", "labels")),
    ("t10k-labels-idx1-ubyte.gz", ("", "test", "labels")),
    ("test-images_idx3_ubyte", ("", "test", "images")),
    ("TRAIN-IMAGES-IDX3-UBYTE.GZ", ("", "train", "images")),
    ("emnist-letters-train-images-idx3-ubyte.gz", ("emnist-letters-", "train", "images")),
    ("._train-images-idx3-ubyte.gz", None),
    (".DS_Store", None),
    ("README.md", None),
    ("train-images-idx3-ubyte.gz.part", None),
])
def test_parse_name(name: str, expected: tuple[str, str, str] | None) -> None:
    assert parse_name(name) == expected


def _touch(root: Path, *names: str) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        write_idx(root / name, np.zeros(1, dtype=np.uint8), compress=name.endswith(".gz"))


def test_pairs_splits_and_ignores_junk(tmp_path: Path) -> None:
    _touch(tmp_path, "train-images.idx3-ubyte", "train-labels.idx1-ubyte", "t10k-images-idx3-ubyte.gz",
           "t10k-labels-idx1-ubyte.gz", "._train-images.idx3-ubyte", "notes.txt")
    found = discover(tmp_path)
    assert list(found) == ["test", "train"]
    assert found["train"].images.name == "train-images.idx3-ubyte"
    assert found["test"].labels.name == "t10k-labels-idx1-ubyte.gz"


def test_explicit_files(tmp_path: Path) -> None:
    _touch(tmp_path, "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", "train-images-idx3-ubyte")
    found = discover([tmp_path / "t10k-images-idx3-ubyte", tmp_path / "t10k-labels-idx1-ubyte"])
    assert list(found) == ["test"]


def test_prefers_gz_when_both_present(tmp_path: Path) -> None:
    _touch(tmp_path, "t10k-images-idx3-ubyte", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte")
    assert discover(tmp_path)["test"].images.name == "t10k-images-idx3-ubyte.gz"


def test_missing_labels(tmp_path: Path) -> None:
    _touch(tmp_path, "train-images-idx3-ubyte.gz")
    with pytest.raises(SourceError, match=r"split 'train' has train-images-idx3-ubyte.gz but no labels file"):
        discover(tmp_path)


def test_nothing_found(tmp_path: Path) -> None:
    _touch(tmp_path, "notes-idx.txt")
    with pytest.raises(SourceError, match=r"no IDX files found; expected names like"):
        discover(tmp_path)


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"no such file or directory"):
        discover(tmp_path / "nope")


def test_several_datasets_need_a_choice(tmp_path: Path) -> None:
    _touch(tmp_path, "emnist-letters-train-images-idx3-ubyte.gz", "emnist-letters-train-labels-idx1-ubyte.gz",
           "emnist-digits-train-images-idx3-ubyte.gz", "emnist-digits-train-labels-idx1-ubyte.gz")
    with pytest.raises(SourceError, match=r"several datasets.*--dataset"):
        discover(tmp_path)
    assert discover(tmp_path, dataset="emnist-digits")["train"].prefix == "emnist-digits-"


def test_bundled_mnist_is_shipped() -> None:
    names = sorted(p.name for p in bundled_mnist().glob("*.gz"))
    assert names == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", "train-images-idx3-ubyte.gz",
                     "train-labels-idx1-ubyte.gz"]
