"""The WAL file shrinks back after a burst of large payloads (it must hold a
whole transaction, but SQLite never truncates it unless told to)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import stoker

#: The engine's journal_size_limit (rust/stoker-sqlite/src/lib.rs).
WAL_SIZE_LIMIT = 64 * 1024 * 1024


def test_the_wal_is_truncated_after_a_large_transaction(rqueue: stoker.Queue, tmp_path: Path) -> None:
    work = rqueue.get_task("rel.work")
    wal = Path(rqueue.path + "-wal")
    # 96 MB in one transaction: the WAL has to grow past the limit to hold it.
    work.map([(str(tmp_path / "ledger"), 0.0, b"w" * (1024 * 1024))] * 96)
    assert wal.stat().st_size > WAL_SIZE_LIMIT
    # The commit handed a checkpoint to the engine's checkpoint thread; once it
    # has run (no reader holds the log back), the next write resets the log and
    # truncates it. Each write below is such a next write.
    deadline = time.monotonic() + 60
    while os.path.getsize(wal) > WAL_SIZE_LIMIT and time.monotonic() < deadline:
        work.delay(str(tmp_path / "ledger"))
        time.sleep(0.01)
    assert os.path.getsize(wal) <= WAL_SIZE_LIMIT
