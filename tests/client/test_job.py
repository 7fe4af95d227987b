"""Job handles (``client/job.py``): lookup, cancel, and what a caller gets once
a lease or a result's retention (``result_ttl``) has run out."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

import stoker
from conftest import HANG_GUARD, TESTS, wait_until


def _env(db: Path) -> dict[str, str]:
    return dict(
        os.environ,
        STOKER_TEST_DB=str(db),
        PYTHONPATH=os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])),
    )


def _run(db: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], env=_env(db), capture_output=True, text=True, timeout=HANG_GUARD, check=False
    )


# --- leases --------------------------------------------------------------------------------


def test_a_job_whose_supervisor_was_killed_raises_lease_expired_error(
    pqueue: stoker.Queue, tmp_path: Path
) -> None:
    db = Path(pqueue.path)
    started = tmp_path / "started"
    job = pqueue.get_task("poison.block").delay(str(started))
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "stoker", "worker", "apps.poison:queue", "-p", "1", "--lease", "1"],
        env=_env(db),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        pid_text = wait_until(lambda: started.exists() and started.read_text(), what="the job to start")
        worker_pid = int(pid_text)
        supervisor.send_signal(signal.SIGKILL)
        supervisor.wait(HANG_GUARD)
        wait_until(lambda: not psutil.pid_exists(worker_pid), what="the worker to die with its supervisor")
    finally:
        supervisor.kill()
        supervisor.wait(HANG_GUARD)
    # Another supervisor reaps the lease once it expires; max_crashes=0, so the job ends dead.
    with pqueue.start_worker(processes=1, lease=1.0, drain_timeout=0.0) as handle:
        assert handle.wait_started(HANG_GUARD), handle.error
        with pytest.raises(stoker.LeaseExpiredError) as raised:
            job.result(timeout=HANG_GUARD)
    assert isinstance(raised.value, stoker.WorkerLostError)
    assert (raised.value.job_id, raised.value.attempt) == (job.id, 1)
    assert [e.kind for e in job.errors] == ["lease_expired"]
    assert isinstance(job.errors[0].exception(), stoker.LeaseExpiredError)


# --- result_ttl ------------------------------------------------------------------------------


def _wait_past_retention(queue: stoker.Queue, job: stoker.Job) -> None:
    record = job.record()
    assert record.finished_ms is not None and record.result_ttl_ms is not None
    end = record.finished_ms + record.result_ttl_ms
    wait_until(lambda: queue.engine.now_ms() >= end, what="the retention to end")


OTHER_PROCESS = """
import sys, stoker
from apps import poison
queue = stoker.Queue(sys.argv[1])
queue.include(poison.queue)
try:
    print(repr(queue.get_job(int(sys.argv[2])).result(timeout=60)))
except Exception as error:
    print(type(error).__name__, error)
"""


def _everywhere(queue: stoker.Queue, job: stoker.Job) -> list[str]:
    """What the supervisor's process, another process and the CLI say of the job's result."""
    db = Path(queue.path)
    said = []
    try:
        said.append(repr(job.result(timeout=HANG_GUARD)))
    except stoker.ResultGetError as error:
        said.append(f"{type(error).__name__} {error}")
    said.append(_run(db, "-c", OTHER_PROCESS, str(db), str(job.id)).stdout.strip())
    waited = _run(db, "-m", "stoker", "wait", "apps.poison:queue", str(job.id))
    said.append(f"wait exits {waited.returncode}: {waited.stdout.strip()}{waited.stderr.strip()}")
    shown = _run(db, "-m", "stoker", "show", "apps.poison:queue", str(job.id), "--json")
    document = json.loads(shown.stdout)
    result = document["result"] and document["result"]["error"]
    said.append(f"show: {result}; errors {len(document['errors'])}")
    return said


def test_an_expired_result_raises_result_expired_error_everywhere_before_and_after_the_purge(
    pqueue: stoker.Queue, ppool: stoker.SupervisorThread
) -> None:
    job = pqueue.get_task("poison.kept").delay("kept a second")
    assert job.result(timeout=HANG_GUARD) == "kept a second"
    _wait_past_retention(pqueue, job)
    expired = f"ResultExpiredError the result of job {job.id} cannot be read: it expired at "
    for purged in (False, True):
        if purged:
            assert pqueue.engine.purge_expired_results(100) == 1
        said = _everywhere(pqueue, job)
        assert said[0].startswith(expired), (purged, said)
        assert said[1].startswith(expired), (purged, said)
        assert said[2].startswith("wait exits 1: stoker: ResultExpiredError: "), (purged, said)
        assert said[3].startswith("show: ResultExpiredError: "), (purged, said)
    with pytest.raises(stoker.ResultExpiredError):
        job.outcome().raise_for_error()


def test_an_expired_error_history_raises_result_expired_error(
    pqueue: stoker.Queue, ppool: stoker.SupervisorThread
) -> None:
    job = pqueue.get_task("poison.kept").delay(ValueError("kept a second too"))
    with pytest.raises(ValueError, match="kept a second too"):
        job.result(timeout=HANG_GUARD)
    _wait_past_retention(pqueue, job)
    with pytest.raises(stoker.ResultExpiredError):
        job.result()
    assert job.errors == []
    said = _everywhere(pqueue, job)
    expired = f"ResultExpiredError the result of job {job.id} cannot be read: it expired at "
    assert said[0].startswith(expired) and said[1].startswith(expired), said
    assert said[2].startswith("wait exits 1: stoker: ResultExpiredError: "), said
    assert said[3] == "show: None; errors 0", said
    assert [letter.error for letter in pqueue.dead_letters()] == [None]


def test_the_heartbeat_purges_an_expired_result(pqueue: stoker.Queue) -> None:
    with pqueue.start_worker(processes=1, lease=0.3, drain_timeout=0.0) as handle:
        assert handle.wait_started(HANG_GUARD), handle.error
        job = pqueue.get_task("poison.kept").delay("x" * 5000)
        assert job.result(timeout=HANG_GUARD) == "x" * 5000
        wait_until(lambda: job.record().result is None, what="the purge")
    with pytest.raises(stoker.ResultExpiredError):
        job.result()


# --- handles ------------------------------------------------------------------------------------


def test_unknown_job_id_is_a_key_error(queue: stoker.Queue) -> None:
    with pytest.raises(stoker.JobNotFoundError) as info:
        queue.get_job(123456)
    assert isinstance(info.value, KeyError)
    assert info.value.job_id == 123456
    assert "123456" in str(info.value)


def test_cancel_pending_job(queue: stoker.Queue) -> None:
    job = queue.get_task("add").delay(1, 2)
    assert job.cancel() == "cancelled"
    assert job.status == "cancelled"
    with pytest.raises(stoker.JobCancelledError):
        job.result(timeout=1)
    assert job.cancel() == "cancelled"


def test_result_timeout_names_the_job(queue: stoker.Queue) -> None:
    job = queue.get_task("add").delay(1, 2)
    with pytest.raises(stoker.ResultTimeoutError) as info:
        job.result(timeout=0.01)
    assert info.value.job_id == job.id
    assert isinstance(info.value, TimeoutError)
