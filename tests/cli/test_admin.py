"""``stoker replay``, ``cancel`` and ``purge``: what they change (``stoker.cli.admin``)."""

from __future__ import annotations

from pathlib import Path

import pytest

import stoker
from cli.running import APP, Run, run_all, run_json
from conftest import HANG_GUARD, wait_until
from stoker.cli import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    main,
)

# --- replay, cancel -----------------------------------------------------------


def test_replay_sends_a_dead_job_again(queue: stoker.Queue, cli: Run) -> None:
    dead = queue.get_task("quota").delay("dan", 1)
    ok = queue.get_task("add").delay(1, 1)
    run_all(queue)

    code, out, _ = cli("replay", str(dead.id))
    assert code == EXIT_OK
    new_id = int(out.split()[-1])
    assert out.strip() == f"job {dead.id} replayed as job {new_id}"
    record = queue.get_job(new_id).record()
    assert (record.status, record.task_name, record.replayed_from) == ("pending", "quota", dead.id)

    again = run_json(cli, "replay", str(dead.id))
    assert again["id"] == dead.id and again["new_job_id"] not in (dead.id, new_id)

    code, _, err = cli("replay", str(ok.id))
    assert code == EXIT_FAILED
    assert err.strip() == f"stoker: JobStateError: cannot replay job {ok.id}: it is complete"


def test_cancel_a_waiting_job_then_again(queue: stoker.Queue, cli: Run) -> None:
    job = queue.get_task("add").options(delay=3600).delay(1, 2)
    assert cli("cancel", str(job.id)) == (EXIT_OK, f"job {job.id} cancelled\n", "")
    assert job.status == "cancelled"
    code, out, _ = cli("cancel", str(job.id))
    assert (code, out.strip()) == (EXIT_OK, f"job {job.id} is already cancelled: nothing to cancel")
    assert run_json(cli, "cancel", str(job.id)) == {"id": job.id, "outcome": "cancelled", "was": "cancelled"}


def test_cancel_a_running_job_kills_it(
    queue: stoker.Queue, cli: Run, pool: stoker.SupervisorThread, tmp_path: Path
) -> None:
    marker = tmp_path / "started"
    job = queue.get_task("wait_for_file").delay(str(marker), str(tmp_path / "never"))
    wait_until(marker.exists, what="the job to start")
    assert run_json(cli, "cancel", str(job.id)) == {"id": job.id, "outcome": "requested", "was": "running"}
    assert job.wait(HANG_GUARD) == "cancelled"


# --- purge --------------------------------------------------------------------


def test_purge_needs_yes_or_dry_run_and_keeps_what_it_should(queue: stoker.Queue, cli: Run) -> None:
    add = queue.get_task("add")
    done = [add.delay(i, i) for i in range(3)]
    dead = queue.get_task("quota").delay("eve", 1)
    run_all(queue)
    waiting = add.options(delay=3600).delay(0, 0)
    cancelled = add.options(delay=3600).delay(0, 1)
    cancelled.cancel()
    before = queue.stats()

    code, out, err = cli("purge")
    assert code == EXIT_USAGE
    assert "--yes" in err and out == ""
    assert queue.stats() == before

    assert run_json(cli, "purge", "--dry-run")["jobs"] == 5
    assert run_json(cli, "purge", "--dry-run", "--status", "dead")["jobs"] == 1
    assert run_json(cli, "purge", "--dry-run", "--older-than", "3600")["jobs"] == 0
    code, out, _ = cli("purge", "--dry-run", "--status", "complete", "--status", "cancelled")
    assert (code, out.strip()) == (EXIT_OK, "would purge 4 job(s) (complete, cancelled)")
    assert queue.stats() == before

    assert run_json(cli, "purge", "--yes", "--older-than", "3600")["jobs"] == 0
    code, out, _ = cli("purge", "--status", "dead", "--yes")
    assert (code, out.strip()) == (EXIT_OK, "purged 1 job(s) (dead)")
    with pytest.raises(stoker.JobNotFoundError):
        queue.get_job(dead.id)

    document = run_json(cli, "purge", "--yes")
    assert document == {
        "dry_run": False,
        "statuses": ["complete", "dead", "cancelled"],
        "older_than_s": None,
        "jobs": 4,
    }
    for job in [*done, cancelled]:
        with pytest.raises(stoker.JobNotFoundError):
            queue.get_job(job.id)
    assert queue.get_job(waiting.id).status == "scheduled"


def test_purge_removes_expired_jobs_when_named(queue: stoker.Queue, cli: Run) -> None:
    expired = queue.get_task("add").options(expires=0.001, delay=3600).delay(1, 2)
    wait_until(lambda: queue.engine.expire_due() or expired.status == "expired", what="the expiry")
    done = queue.get_task("add").delay(3, 4)
    run_all(queue)

    # Without --status, purge keeps to complete, dead and cancelled jobs.
    assert run_json(cli, "purge", "--dry-run")["jobs"] == 1
    assert run_json(cli, "purge", "--dry-run", "--status", "expired")["jobs"] == 1
    code, out, _ = cli("purge", "--status", "expired", "--yes")
    assert (code, out.strip()) == (EXIT_OK, "purged 1 job(s) (expired)")
    with pytest.raises(stoker.JobNotFoundError):
        queue.get_job(expired.id)
    assert queue.get_job(done.id).status == "complete"


def test_purge_refuses_unfinished_statuses(cli: Run) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["purge", APP, "--status", "pending", "--yes"])
    assert exit_info.value.code == EXIT_USAGE
