"""Many supervisors on one PostgreSQL database, as separate processes.

Each test works in a fresh schema of the test server (``STOKER_PG_URL``) and
checks outcomes, never timings: jobs end complete exactly once by the ledger
(``harness.audit``), the jobs of a lost supervisor are reaped through its
expired registration, late outcomes are refused and recorded, wake-ups survive
a terminated listener and a restarted server, and a schedule fires each slot
once across supervisors.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

import stoker
from apps import reliability as reliability_app
from apps import tasks as tasks_app
from conftest import HANG_GUARD, TESTS, child_python_path, psql, wait_until
from reliability.harness import SupervisorProcess, audit

ROOT = TESTS.parent


@pytest.fixture
def pg_queue(pg_database: str) -> stoker.Queue:
    """A queue over a fresh PostgreSQL schema with the reliability and test tasks."""
    q = stoker.Queue(pg_database)
    q.include(reliability_app.queue)
    q.include(tasks_app.queue)
    return q


@pytest.fixture
def pg_supervisors(tmp_path: Path) -> Iterator[list[SupervisorProcess]]:
    started: list[SupervisorProcess] = []
    yield started
    for command in started:
        if command.process.poll() is None:
            os.kill(command.pid, signal.SIGCONT)
        command.close()


def start_supervisor(
    queue: stoker.Queue, started: list[SupervisorProcess], tmp_path: Path, *extra: str
) -> SupervisorProcess:
    log = tmp_path / f"supervisor-{len(started)}.log"
    command = SupervisorProcess(queue.path, *extra, log=log)  # type: ignore[arg-type]
    started.append(command)
    return command


def owner_pid(owner: str | None) -> int | None:
    """The pid inside an owner name ``host:pid:token``."""
    if owner is None:
        return None
    return int(owner.split(":")[1])


def running_of(queue: stoker.Queue, pid: int) -> list[int]:
    """Ids of the running jobs leased by the supervisor with ``pid``."""
    records = queue.engine.list_jobs(status="running", limit=10_000)
    return [r.id for r in records if owner_pid(r.lease_owner) == pid]


def finished(queue: stoker.Queue) -> int:
    stats = queue.stats()
    return stats["complete"] + stats["dead"] + stats["cancelled"]


def check_audit(queue: stoker.Queue, ids: list[int], ledger: Path) -> None:
    result = audit(queue.engine, ids, ledger)
    assert not result.problems, result.summary() + "\n" + "\n".join(result.problems[:20])
    assert result.complete == len(ids), result.summary()


def test_four_supervisors_drain_jobs_exactly_once(
    pg_queue: stoker.Queue, tmp_path: Path, pg_supervisors: list[SupervisorProcess]
) -> None:
    jobs_count = 5000
    ledger = tmp_path / "ledger"
    jobs = pg_queue.get_task("rel.work").map([(str(ledger),)] * jobs_count)
    for _ in range(4):
        start_supervisor(pg_queue, pg_supervisors, tmp_path, "-p", "2")
    wait_until(lambda: finished(pg_queue) >= jobs_count, timeout=HANG_GUARD * 5, what="every job finished")
    check_audit(pg_queue, [job.id for job in jobs], ledger)
    workers_used = {line.split()[2] for line in ledger.read_text().splitlines()}
    assert len(workers_used) > 2, "the jobs were shared between supervisors"


def test_a_killed_supervisors_jobs_run_elsewhere_after_its_registration_expires(
    pg_queue: stoker.Queue, tmp_path: Path, pg_supervisors: list[SupervisorProcess]
) -> None:
    ledger, release = tmp_path / "ledger", tmp_path / "release"
    # Jobs that wait for the release file, so they are surely still running
    # when their supervisor is killed. Their job leases (30 s by default) are
    # far longer than a registration, so only the expired registration can
    # have them reaped before they run again.
    markers = [tmp_path / f"markers-{n}" for n in range(2)]
    jobs = []
    for directory in markers:
        directory.mkdir()
        jobs.append(pg_queue.get_task("rel.fenced").delay(str(ledger), str(directory), str(release)))
    victim = start_supervisor(pg_queue, pg_supervisors, tmp_path, "-p", "2")
    wait_until(
        lambda: all((directory / "attempt-1").exists() for directory in markers),
        what="the first supervisor to run both jobs",
    )
    assert sorted(running_of(pg_queue, victim.pid)) == sorted(job.id for job in jobs)
    victim.kill()
    start_supervisor(pg_queue, pg_supervisors, tmp_path, "-p", "2")
    wait_until(
        lambda: all((directory / "attempt-2").exists() for directory in markers),
        what="the jobs to run again on the other supervisor",
    )
    release.write_text("go")
    wait_until(lambda: finished(pg_queue) >= len(jobs), what="every job finished")
    check_audit(pg_queue, [job.id for job in jobs], ledger)
    for job in jobs:
        errors = pg_queue.engine.errors(job.id)
        assert [(e.attempt, e.kind) for e in errors] == [(1, "lease_expired")], errors
        assert "stopped renewing its registration" in errors[0].message, errors[0].message


def test_a_stopped_supervisors_late_outcomes_are_refused_and_recorded(
    pg_queue: stoker.Queue, tmp_path: Path, pg_supervisors: list[SupervisorProcess]
) -> None:
    ledger, markers, release = tmp_path / "ledger", tmp_path / "markers", tmp_path / "release"
    markers.mkdir()
    job = pg_queue.get_task("rel.fenced").delay(str(ledger), str(markers), str(release))
    stopped = start_supervisor(pg_queue, pg_supervisors, tmp_path, "-p", "1")
    wait_until((markers / "attempt-1").exists, what="the first attempt to start")
    os.kill(stopped.pid, signal.SIGSTOP)
    start_supervisor(pg_queue, pg_supervisors, tmp_path, "-p", "1")
    # The stopped supervisor's registration expires and the other one runs
    # the job again, under a new token.
    wait_until((markers / "attempt-2").exists, what="the second attempt to start")
    release.write_text("go")
    wait_until(lambda: pg_queue.engine.status(job.id) == "complete", what="the job to complete")
    os.kill(stopped.pid, signal.SIGCONT)
    # Both attempts ran to their end; the first one's result comes back to
    # the resumed supervisor and is refused.
    wait_until(
        lambda: any(
            s.job_id == job.id and s.token == 1 and s.outcome == "complete"
            for s in pg_queue.engine.stale_outcomes(limit=100)
        ),
        what="the late completion to be refused",
    )
    record = pg_queue.engine.get(job.id)
    assert (record.status, record.attempt) == ("complete", 2)
    assert pickle_loads(record.result) == (2, int((markers / "attempt-2").read_text()))
    check_audit(pg_queue, [job.id], ledger)


def pickle_loads(data: bytes | None) -> object:
    import cloudpickle

    assert data is not None
    return cloudpickle.loads(data)


def test_jobs_still_flow_when_the_listening_backend_is_terminated(
    pg_queue: stoker.Queue, tmp_path: Path, pg_supervisors: list[SupervisorProcess]
) -> None:
    ledger = tmp_path / "ledger"
    start_supervisor(pg_queue, pg_supervisors, tmp_path, "-p", "1")
    first = pg_queue.get_task("rel.work").delay(str(ledger))
    wait_until(lambda: pg_queue.engine.status(first.id) == "complete", what="the first job")
    schema = schema_of(pg_queue.path)
    listening = f"SELECT count(*) FROM pg_stat_activity WHERE query = 'LISTEN \"stoker_wake_{schema}\"'"
    base = os.environ["STOKER_PG_URL"]
    wait_until(lambda: psql(base, listening) == "1", what="the supervisor to listen")
    terminated = psql(
        base,
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        f"WHERE query = 'LISTEN \"stoker_wake_{schema}\"') AS t",
    )
    assert terminated == "1"
    later = pg_queue.get_task("rel.work").map([(str(ledger),)] * 20)
    wait_until(lambda: finished(pg_queue) >= 21, what="the jobs sent after the listener died")
    wait_until(lambda: psql(base, listening) == "1", what="the listener to reconnect")
    check_audit(pg_queue, [first.id] + [job.id for job in later], ledger)


def schema_of(url: str) -> str:
    return url.rsplit("search_path%3D", 1)[1]


def test_a_server_restart_loses_nothing(
    pg_queue: stoker.Queue, tmp_path: Path, pg_supervisors: list[SupervisorProcess]
) -> None:
    server_dir = os.environ.get("STOKER_PG_DIR")
    if not server_dir:
        # A server the test did not start (an external STOKER_PG_URL) is not
        # the test's to restart; make test starts its own and sets the variable.
        pytest.skip("set STOKER_PG_DIR to the directory of the test server (scripts/pg-server) to restart it")
    ledger = tmp_path / "ledger"
    jobs = pg_queue.get_task("rel.work").map([(str(ledger), 0.01)] * 600)
    for _ in range(2):
        start_supervisor(pg_queue, pg_supervisors, tmp_path, "-p", "2")
    wait_until(lambda: finished(pg_queue) >= 50, what="some jobs to finish before the restart")
    subprocess.run(
        [str(ROOT / "scripts" / "pg-server"), "restart", server_dir], check=True, timeout=HANG_GUARD
    )
    wait_until(
        lambda: finished_or_none(pg_queue) >= len(jobs), timeout=HANG_GUARD * 2, what="every job finished"
    )
    check_audit(pg_queue, [job.id for job in jobs], ledger)
    for command in pg_supervisors:
        assert command.process.poll() is None, command.output()


def finished_or_none(queue: stoker.Queue) -> int:
    """Finished jobs, or 0 while the server is still coming back."""
    try:
        return finished(queue)
    except stoker.errors.StorageError:
        return 0


def test_a_schedule_fires_each_slot_once_across_three_supervisors(
    pg_queue: stoker.Queue, tmp_path: Path, pg_supervisors: list[SupervisorProcess]
) -> None:
    slots = 300
    every = 0.02
    schedule = pg_queue.get_task("add").schedule_every(every, args=(1, 2), name="fast")
    for _ in range(3):
        start_supervisor(pg_queue, pg_supervisors, tmp_path, "-p", "1")

    def fires() -> list[stoker._core.ScheduleFire]:
        return pg_queue.engine.schedule_fires(schedule.id, limit=100_000)

    wait_until(lambda: len(fires()) >= slots, timeout=HANG_GUARD * 2, what=f"{slots} fires")
    schedule.pause()
    records = fires()
    per_slot = Counter(f.fire_ms for f in records)
    assert max(per_slot.values()) == 1, [s for s, n in per_slot.items() if n > 1][:10]
    owners = {f.owner for f in records}
    assert len(owners) >= 2, "more than one supervisor fired"
    outcomes = Counter(f.outcome for f in records)
    assert set(outcomes) <= {"enqueued", "missed"}, outcomes
    enqueued = [f for f in records if f.outcome == "enqueued"]
    assert len({f.job_id for f in enqueued}) == len(enqueued)
    assert pg_queue.engine.get_schedule(schedule.id).enqueued == len(enqueued)


def test_results_errors_and_the_cli_work_on_postgresql(
    pg_queue: stoker.Queue, tmp_path: Path, pg_supervisors: list[SupervisorProcess]
) -> None:
    start_supervisor(pg_queue, pg_supervisors, tmp_path, "-p", "1")
    assert pg_queue.get_task("add").delay(1, 2).result(timeout=HANG_GUARD) == 3
    failing = pg_queue.get_task("quota").delay("ann", 3)
    with pytest.raises(tasks_app.QuotaError) as caught:
        failing.result(timeout=HANG_GUARD)
    assert caught.value.limit == 3
    env = dict(os.environ, STOKER_TEST_DB=pg_queue.path, PYTHONPATH=child_python_path())
    done = subprocess.run(
        [sys.executable, "-m", "stoker", "info", "apps.tasks:queue", "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=HANG_GUARD,
    )
    document = json.loads(done.stdout)
    assert (document["backend"], document["schema_version"]) == ("postgresql", stoker._core.PG_SCHEMA_VERSION)
    assert document["counts"]["complete"] == 1
    assert document["counts"]["dead"] == 1
