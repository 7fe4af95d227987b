"""Hard timeouts hold whatever the task does, and leave no process behind."""

from __future__ import annotations

import os
from pathlib import Path

import psutil
import pytest

import stoker
from conftest import HANG_GUARD, wait_until
from reliability.harness import worker_pids_under


def _gone(pid: int) -> bool:
    try:
        psutil.Process(pid)
    except psutil.NoSuchProcess:
        return True
    return False  # Alive, or a zombie nobody reaped yet.


def _own_leftovers() -> list[str]:
    """Descendants of this process other than the shared fork server and resource tracker."""
    found = []
    for process in psutil.Process(os.getpid()).children(recursive=True):
        try:
            cmdline = " ".join(process.cmdline())
            status = process.status()
        except psutil.NoSuchProcess:
            continue
        if status != psutil.STATUS_ZOMBIE and ("forkserver" in cmdline or "resource_tracker" in cmdline):
            continue
        found.append(f"{process.pid} {status} {cmdline[:100]}")
    return found


CASES = {
    "sleep": ("sleeper", lambda marker, tmp: (marker, 600)),
    "c-loop-holding-the-gil": ("blocked_in_c", lambda marker, tmp: (marker,)),
    "ignores-sigterm": ("ignores_sigterm", lambda marker, tmp: (marker,)),
    "children-and-grandchildren": ("with_children", lambda marker, tmp: (marker,)),
    "stopped-mid-100mb-result": ("rel.stall_mid_result", lambda marker, tmp: (marker,)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_hard_timeout_holds_and_leaves_nothing_behind(
    rqueue: stoker.Queue, tmp_path: Path, case: str
) -> None:
    task, make_args = CASES[case]
    marker = str(tmp_path / "started")
    handle = rqueue.start_worker(processes=1, kill_grace=0.2, drain_timeout=0.0)
    try:
        assert handle.wait_started(HANG_GUARD), handle.error
        job = rqueue.get_task(task).delay(*make_args(marker, tmp_path))
        wait_until(lambda: Path(marker).exists() and Path(marker).read_text(), what="the task to start")
        pids = [int(p) for p in Path(marker).read_text().split()]
        if case == "children-and-grandchildren":
            child = psutil.Process(pids[1])
            pids += [p.pid for p in wait_until(child.children, what="the grandchild")]
        with pytest.raises(stoker.TaskTimeoutError, match="hard timeout"):
            job.result(timeout=HANG_GUARD)
        for pid in pids:
            wait_until(lambda pid=pid: _gone(pid), what=f"process {pid} to be gone and reaped")
        (error,) = job.errors
        assert error.kind == "timeout"
        # The pool goes on.
        assert rqueue.get_task("rel.add").delay(2, 3).result(timeout=HANG_GUARD) == 5
        assert handle.error is None
    finally:
        # Bounded: a supervisor stuck on a worker's half-sent message must fail the test, not hang it.
        handle.stop(HANG_GUARD)
    assert not handle.is_alive()
    assert worker_pids_under(os.getpid()) == []
    wait_until(lambda: _own_leftovers() == [], what=f"no leftover process (found {_own_leftovers()})")
