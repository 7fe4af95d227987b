"""No orphans: when a supervisor is SIGKILLed, every process below it goes too,
including a task's children and grandchildren and a task spinning in C with the GIL.

How long that takes is measured, not asserted (``benches/reliability_orphans.py``
reports it against its 2 s goal); the test only waits with a hang guard.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

import stoker
from conftest import wait_until
from reliability.harness import SupervisorProcess, all_gone, open_database_files


@pytest.mark.parametrize("start_method", ["forkserver", "spawn"])
def test_supervisor_sigkill_leaves_no_descendant(
    rqueue: stoker.Queue,
    tmp_path: Path,
    supervisors: list[SupervisorProcess],
    start_method: str,
    record_property: Callable[[str, object], None],
) -> None:
    family_marker, spin_marker = tmp_path / "family", tmp_path / "spin"
    command = SupervisorProcess(Path(rqueue.path), "-p", "2", "--start-method", start_method)
    supervisors.append(command)
    rqueue.get_task("rel.family").delay(str(family_marker))
    rqueue.get_task("rel.spin_in_c").delay(str(spin_marker))
    wait_until(lambda: family_marker.exists() and len(family_marker.read_text().split()) == 2, what="family")
    wait_until(lambda: spin_marker.exists() and spin_marker.read_text(), what="the C loop to start")
    child = psutil.Process(int(family_marker.read_text().split()[1]))
    wait_until(child.children, what="the grandchild")

    processes = command.descendants()
    assert len(processes) >= 7, processes  # guardian, fork server or not, 3 workers, child, grandchild
    # Only the supervisor holds the database open.
    for process in processes:
        assert open_database_files(process.pid, rqueue.path) == [], process
    start = time.monotonic()
    command.kill()
    wait_until(lambda: all_gone(processes), what="every descendant of the killed supervisor to exit")
    elapsed = time.monotonic() - start
    print(f"\n{start_method}: {len(processes)} descendants gone {elapsed * 1000:.0f} ms after SIGKILL")
    record_property("orphans_gone_ms", round(elapsed * 1000))
