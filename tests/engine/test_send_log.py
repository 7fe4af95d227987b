"""The send log: single sends of a process that runs its own pool are appended
to a file and stored by the pool's next transaction; none is lost when the
process dies, none is stored twice."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import stoker
from apps import tasks as app
from conftest import HANG_GUARD, TESTS


def log_files(db: Path) -> list[Path]:
    directory = Path(f"{db}-sends")
    return sorted(directory.glob("*.log")) if directory.exists() else []


def live_counts(queue: stoker.Queue) -> dict[str, int]:
    """How many jobs of the database are in each status, leaving out zeros."""
    return {status: count for status, count in queue.engine.stats().items() if count}


def run_all(queue: stoker.Queue, job_ids: list[int]) -> list[object]:
    """Run the jobs with a pool of this process; their results, in order."""
    handle = queue.start_worker(processes=2, drain_timeout=0.0)
    try:
        return [stoker.Job(queue, job_id).result(timeout=HANG_GUARD) for job_id in job_ids]
    finally:
        handle.stop(HANG_GUARD)


def run_child(db: Path, body: str) -> list[int]:
    """Run ``body`` in a new process with ``queue`` over ``db`` (the tasks of
    ``apps.tasks``); the ids of the jobs it sent, one per line of its output."""
    script = textwrap.dedent(
        """
        import os, signal, sys
        import stoker
        from apps import tasks as app

        def main():
            queue = stoker.Queue(sys.argv[1])
            queue.include(app.queue)
            add = queue.tasks["add"]
        {body}

        if __name__ == "__main__":
            main()
        """
    ).format(body=textwrap.indent(textwrap.dedent(body), "    "))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-c", script, str(db)],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
        env=env,
        check=False,
    )
    assert done.returncode == -9, f"the child was to die by SIGKILL:\n{done.stderr}"
    return [int(line) for line in done.stdout.split()]


def test_sends_with_a_pool_in_the_process_are_logged_and_run(
    queue: stoker.Queue, pool: stoker.SupervisorThread, tmp_path: Path
) -> None:
    add = queue.tasks["add"]
    jobs = [add.delay(i, i) for i in range(20)]
    assert log_files(tmp_path / "jobs.db"), "the sends went through a log file"
    # This process sees its own sends at once, whether stored yet or not.
    assert all(job.status in ("pending", "running", "complete") for job in jobs)
    assert [job.result(timeout=HANG_GUARD) for job in jobs] == [2 * i for i in range(20)]
    pool.stop(HANG_GUARD)
    assert log_files(tmp_path / "jobs.db") == [], "a stopped pool removes its log"
    # Without a pool, a send is stored in its own transaction again.
    later = add.delay(1, 2)
    assert later.status == "pending"
    assert log_files(tmp_path / "jobs.db") == []


def test_sends_a_dead_process_logged_are_stored_once_by_the_next_opener(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    # Nothing in the child stores what it logs: no pool runs there, and it
    # dies without a word right after its last send.
    sent = run_child(
        db,
        """
        queue.engine.open_send_log()
        for i in range(50):
            print(add.delay(i, 100).id, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """,
    )
    assert len(sent) == 50
    assert len(log_files(db)) == 1, "the dead process left its log"

    queue = stoker.Queue(db)
    queue.include(app.queue)
    assert log_files(db) == [], "opening the database stored the orphan log"
    assert live_counts(queue) == {"pending": 50}

    assert run_all(queue, sent) == [i + 100 for i in range(50)]
    assert live_counts(queue) == {"complete": 50}, "no send was stored twice"


def test_a_pool_process_killed_while_sending_loses_no_job(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    # The child runs its own pool (so its sends are logged) and is killed in
    # the middle of sending: some sends are stored, some only logged, some
    # claimed by its pool with a short lease.
    sent = run_child(
        db,
        """
        handle = queue.start_worker(processes=1, lease=1.0)
        handle.wait_started(60)
        for i in range(300):
            print(add.delay(i, 1).id, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """,
    )
    assert len(sent) == 300
    queue = stoker.Queue(db)
    queue.include(app.queue)
    assert run_all(queue, sent) == [i + 1 for i in range(300)]
    counts = live_counts(queue)
    assert counts == {"complete": 300}, f"every send stored exactly once: {counts}"
