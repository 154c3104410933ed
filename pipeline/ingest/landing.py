"""After a commit attempt: did our commit land, and are its files still there?

Every idxlake commit carries a transaction id (:data:`TXN_KEY`, a top-level key of the
commit's ``commitInfo``, also shown by ``idxlake history``). When the commit call fails
(a dropped connection, a timeout, Ctrl-C), the error alone does not say whether the
commit is in the log: on S3 the PUT may have landed just before the connection died.
:func:`find_commit` reads the log to learn the truth. :func:`check_committed_files`
then checks that every data file the commit references exists, so a version whose files
are gone (deleted by a concurrent ``vacuum --full``) is reported at once, never a silent
success.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping, Sequence

import pyarrow.fs as pafs

from idxlake.schemas import CommitUncertainError, DataCorruptionError, TableNotFoundError, open_table

logger = logging.getLogger(__name__)

TXN_KEY = "idxlakeTxn"
"""``commitInfo`` key holding the transaction id of an idxlake commit."""
LOOKUP_ATTEMPTS = 4
"""Times the log is read (with a growing pause) before a commit's fate is declared unknown."""


def new_txn() -> str:
    """A fresh transaction id."""
    return uuid.uuid4().hex


def find_commit(table: str, txn: str, *, after: int | None,
                storage_options: Mapping[str, str] | None, pause: float = 0.25) -> int | None:
    """The version whose commit carries ``txn``, or ``None`` when no version after ``after`` does.

    Args:
        table: Table URI.
        txn: Transaction id to look for.
        after: Version the writer read (``None``: the writer created the table).
        storage_options: Object-store options.
        pause: Seconds to wait before the second read (doubles each time).

    Raises:
        CommitUncertainError: the log could not be read in :data:`LOOKUP_ATTEMPTS` tries.
    """
    last: Exception | None = None
    for attempt in range(LOOKUP_ATTEMPTS):
        if attempt:
            time.sleep(pause * 2 ** (attempt - 1))
        try:
            dt = open_table(table, storage_options=storage_options)
            newer = dt.version() - (-1 if after is None else after)
            if newer <= 0:
                return None
            for entry in dt.history(newer):
                if entry.get(TXN_KEY) == txn:
                    return int(entry["version"])
            return None
        except TableNotFoundError as exc:
            if after is None and "no Delta table here" in str(exc):
                return None  # a create that did not land
            last = exc
        except Exception as exc:  # storage unreachable: try again, then give up honestly
            last = exc
    raise CommitUncertainError(
        f"{table}: the commit was attempted but the log cannot be read to learn whether it landed ({last}); "
        f"look for transaction {txn} in `idxlake history {table}` before running the write again")


def check_committed_files(table: str, version: int, fs: pafs.FileSystem, paths: Sequence[str],
                          root: str) -> None:
    """Raise when a data file that version ``version`` just committed does not exist.

    Raises:
        DataCorruptionError: naming the missing files; the version cannot be read.
    """
    if not paths:
        return
    missing = [p.removeprefix(root).lstrip("/") for p, info in zip(paths, fs.get_file_info(list(paths)), strict=True)
               if info.type == pafs.FileType.NotFound]
    if missing:
        raise DataCorruptionError(
            f"{table}: version {version} was committed but {len(missing)} of its data files are gone: "
            f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''} (deleted meanwhile, e.g. by a concurrent "
            f"`vacuum --full`); version {version} cannot be read: run the same write again to replace them")
