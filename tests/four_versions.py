"""Tests' helper: a table with versions 0 ingest, 1 append of the same files, 2 replace of test, 3 optimize."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from conftest import SyntheticSource, make_source
from deltalake import DeltaTable

from idxlake import ingest
from idxlake.pipeline.inspect.maintenance import optimize

ROWS = {0: {"test": 20, "train": 40}, 1: {"test": 40, "train": 80}, 2: {"test": 20, "train": 80},
        3: {"test": 20, "train": 80}}
"""Rows per split of each version."""


class Four:
    """The four-version table and what each version holds."""

    def __init__(self, table: str, first: SyntheticSource, second: SyntheticSource) -> None:
        self.table, self.first, self.second = table, first, second
        self.stamps = {int(c["version"]): int(c["timestamp"]) for c in DeltaTable(table).history()}

    def iso(self, version: int) -> str:
        """The commit time of ``version`` with milliseconds, as history shows it."""
        stamp = datetime.fromtimestamp(self.stamps[version] / 1000, tz=timezone.utc)
        return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def rows(self, version: int) -> list[tuple[str, int, int, bytes]]:
        """``(split, id, label, image bytes)`` of every row of ``version``, from the source arrays alone."""
        (train_x, train_y), (test_x, test_y) = self.first.arrays["train"], self.first.arrays["test"]
        parts = {0: {"train": (train_x, train_y), "test": (test_x, test_y)}}
        parts[1] = {"train": (np.concatenate([train_x, train_x]), np.concatenate([train_y, train_y])),
                    "test": (np.concatenate([test_x, test_x]), np.concatenate([test_y, test_y]))}
        parts[2] = parts[3] = {"train": parts[1]["train"], "test": self.second.arrays["test"]}
        return [(split, i, int(y[i]), x[i].tobytes()) for split, (x, y) in parts[version].items()
                for i in range(len(y))]

    def labels(self, version: int) -> Counter[tuple[str, int]]:
        """(split, label) -> rows of ``version``, from the source arrays (independent of the table)."""
        return Counter((split, label) for split, _, label, _ in self.rows(version))


def build_four(base: Path) -> Four:
    """Build the table under ``base`` (sources in base/a and base/b)."""
    first = make_source(base / "a", rows={"train": 40, "test": 20}, classes=7)
    second = make_source(base / "b", rows={"test": 20}, seed=3, classes=4)
    table = str(base / "mnist")
    ingest(first.root, table, row_group_rows=16)
    ingest(first.root, table, mode="append", row_group_rows=16, allow_duplicate=True)
    ingest(second.root, table, row_group_rows=16)
    assert optimize(table).version == 3
    return Four(table, first, second)


