"""Cross-process wake-ups (``stoker._base.wakeup``): FIFOs beside the database."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import stoker
from conftest import HANG_GUARD
from stoker._base.wakeup import WakeListener, WakeSender, wake_dir
from stoker.pool import tunables

SEND_FROM_ANOTHER_PROCESS = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    import stoker
    from apps import tasks as app
    queue = stoker.Queue({db!r})
    queue.include(app.queue)
    print(queue.send(app.add.name, 20, 22).id)
    """
)


def readable(fd: int, timeout: float = HANG_GUARD) -> bool:
    ready, _, _ = select.select([fd], [], [], timeout)
    return bool(ready)


def test_a_sender_in_another_process_wakes_the_listener(tmp_path: Path) -> None:
    db = str(tmp_path / "jobs.db")
    listener = WakeListener(db)
    try:
        assert not readable(listener.fd, 0)
        code = f"from stoker._base.wakeup import WakeSender; WakeSender({db!r}).notify()"
        subprocess.run([sys.executable, "-c", code], check=True, timeout=HANG_GUARD)
        assert readable(listener.fd)
        listener.drain()
        assert not readable(listener.fd, 0)
    finally:
        listener.close()
    assert os.listdir(wake_dir(db)) == []


def test_a_sender_skips_its_own_process_when_asked(tmp_path: Path) -> None:
    db = str(tmp_path / "jobs.db")
    listener = WakeListener(db)
    sender = WakeSender(db)
    try:
        sender.notify(skip_own_process=True)
        assert not readable(listener.fd, 0)
        sender.notify()
        assert readable(listener.fd, 0)
    finally:
        sender.close()
        listener.close()


def test_a_fifo_nobody_reads_is_removed_by_the_next_sender(tmp_path: Path) -> None:
    db = str(tmp_path / "jobs.db")
    directory = wake_dir(db)
    os.makedirs(directory)
    dead = os.path.join(directory, "12345-deadbeef")
    os.mkfifo(dead)  # What a SIGKILLed supervisor leaves behind.
    live = WakeListener(db)
    sender = WakeSender(db)
    try:
        sender.notify()
        assert os.listdir(directory) == [os.path.basename(live.path)]
        assert readable(live.fd, 0)
    finally:
        sender.close()
        live.close()


def test_no_supervisor_ever_listened_is_not_an_error(tmp_path: Path) -> None:
    sender = WakeSender(str(tmp_path / "jobs.db"))
    sender.notify()
    assert not os.path.exists(wake_dir(str(tmp_path / "jobs.db")))


def test_work_sent_by_another_process_wakes_an_idle_supervisor(
    queue: stoker.Queue, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without the wake-up this supervisor would look at the database only
    # after an hour: the job could only run because the FIFO woke it.
    monkeypatch.setattr(tunables, "CHANGE_POLL_INTERVAL", 3600.0)
    handle = queue.start_worker(processes=1, drain_timeout=0.0)
    try:
        assert handle.wait_started(HANG_GUARD), handle.error
        script = SEND_FROM_ANOTHER_PROCESS.format(tests=str(Path(__file__).parent.parent), db=queue.path)
        sent = subprocess.run(
            [sys.executable, "-c", script], check=True, capture_output=True, text=True, timeout=HANG_GUARD
        )
        job = stoker.Job(queue, int(sent.stdout.strip()))
        assert job.result(timeout=HANG_GUARD) == 42
    finally:
        handle.stop(HANG_GUARD)
