"""``stoker wait`` for one job and ``wait --drain`` for all (``stoker.cli.waiting``): exit codes, output."""

from __future__ import annotations

import sys

import pytest

import stoker
from cli.running import APP, Run, run_all, run_json
from conftest import wait_until
from stoker.cli import (
    EXIT_CANCELLED,
    EXIT_DEAD,
    EXIT_OK,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    main,
)


def test_wait_exit_codes_tell_the_outcome(queue: stoker.Queue, cli: Run) -> None:
    ok = queue.get_task("add").delay(2, 5)
    dead = queue.get_task("quota").delay("fay", 2)
    run_all(queue)
    cancelled = queue.get_task("add").options(delay=3600).delay(0, 0)
    cancelled.cancel()
    never = queue.get_task("add").options(delay=3600).delay(0, 1)

    assert cli("wait", str(ok.id)) == (EXIT_OK, "7\n", "")
    assert run_json(cli, "wait", str(ok.id))["result"]["repr"] == "7"

    code, out, err = cli("wait", str(dead.id))
    assert (code, out) == (EXIT_DEAD, "")
    assert "apps.tasks.QuotaError: fay is over the quota of 2" in err
    assert "| Traceback (most recent call last):" in err
    document = run_json(cli, "wait", str(dead.id), expect=EXIT_DEAD)
    assert document["status"] == "dead"
    assert document["error"]["type"] == "apps.tasks.QuotaError"

    code, out, err = cli("wait", str(cancelled.id))
    assert (code, out, err.strip()) == (EXIT_CANCELLED, "", f"job {cancelled.id} was cancelled")
    assert run_json(cli, "wait", str(cancelled.id), expect=EXIT_CANCELLED)["status"] == "cancelled"

    code, out, err = cli("wait", str(never.id), "--timeout", "0")
    assert (code, out) == (EXIT_TIMEOUT, "")
    assert f"job {never.id} did not finish" in err
    document = run_json(cli, "wait", str(never.id), "--timeout", "0", expect=EXIT_TIMEOUT)
    assert document == {"id": never.id, "status": "scheduled", "timed_out": True}


def test_wait_on_an_expired_job_says_it_expired(queue: stoker.Queue, cli: Run) -> None:
    expired = queue.get_task("add").options(expires=0.001, delay=3600).delay(1, 2)
    wait_until(lambda: queue.engine.expire_due() or expired.status == "expired", what="the expiry")
    code, out, err = cli("wait", str(expired.id))
    assert (code, out) == (EXIT_DEAD, "")
    assert err == f"job {expired.id} expired before it ran: it never will\n"
    document = run_json(cli, "wait", str(expired.id), expect=EXIT_DEAD)
    assert (document["status"], document["error"]) == ("expired", None)


def test_wait_blocks_until_the_pool_finishes_the_job(
    queue: stoker.Queue, cli: Run, pool: stoker.SupervisorThread
) -> None:
    job = queue.get_task("async_add").delay(20, 22)
    assert cli("wait", str(job.id)) == (EXIT_OK, "42\n", "")


def test_wait_drain_until_nothing_is_left(
    queue: stoker.Queue, cli: Run, pool: stoker.SupervisorThread
) -> None:
    add = queue.get_task("add")
    jobs = [add.delay(i, 1) for i in range(20)]
    jobs.append(queue.get_task("quota").delay("gus", 1))
    code, out, _ = cli("wait", "--drain")
    assert code == EXIT_OK
    assert all(job.done() for job in jobs)
    *progress, last = out.splitlines()
    assert progress, out
    finished, total = progress[-1].split()[1].split("/")
    assert finished == total
    assert "complete 20, dead 1, cancelled 0, expired 0 in all" in last

    document = run_json(cli, "wait", "--drain")
    assert document["drained"] is True and document["timed_out"] is False
    assert document["counts"]["complete"] == 20


def test_wait_drain_times_out(queue: stoker.Queue, cli: Run) -> None:
    queue.get_task("add").options(delay=3600).delay(1, 1)
    code, out, err = cli("wait", "--drain", "--timeout", "0")
    assert code == EXIT_TIMEOUT
    assert "finished 0/1 (pending 0, scheduled 1, running 0, waiting 0)" in out
    assert "1 job(s) still unfinished" in err
    document = run_json(cli, "wait", "--drain", "--timeout", "0", expect=EXIT_TIMEOUT)
    assert document["timed_out"] is True and document["total"] == 1


def test_wait_drain_counts_jobs_waiting_on_a_dependency_as_unfinished(queue: stoker.Queue, cli: Run) -> None:
    add = queue.get_task("add")
    later = add.options(delay=3600).delay(1, 1)
    add.options(depends_on=[later]).delay(2, 2)
    code, out, err = cli("wait", "--drain", "--timeout", "0")
    assert code == EXIT_TIMEOUT
    assert "finished 0/2 (pending 0, scheduled 1, running 0, waiting 1)" in out
    assert "2 job(s) still unfinished" in err
    document = run_json(cli, "wait", "--drain", "--timeout", "0", expect=EXIT_TIMEOUT)
    assert (document["total"], document["counts"]["waiting"]) == (2, 1)


def test_wait_drain_shows_a_progress_bar_on_a_terminal(
    queue: stoker.Queue, cli: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("rich")
    queue.get_task("add").delay(1, 1)
    run_all(queue)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    code, out, _ = cli("wait", "--drain")
    assert code == EXIT_OK
    assert "draining" in out
    assert "drained: 0 job(s) finished" in out


@pytest.mark.parametrize(
    "argv",
    [
        ["wait", APP],
        ["wait", APP, "1", "--drain"],
    ],
)
def test_wait_needs_a_job_or_drain(cli: Run, capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    assert main(argv) == EXIT_USAGE
    assert "JOB_ID or --drain" in capsys.readouterr().err
