"""The user's side of schedules and flow control: task options, schedule handles, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import stoker
from conftest import HANG_GUARD, child_python_path, read_ledger, wait_until
from stoker.errors import (
    DependencyFailedError,
    InvalidOptionError,
    JobExpiredError,
    RateLimitExceededError,
    ScheduleNotFoundError,
)


def _noop(x: int = 0) -> int:
    return x


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("rate_limit", "fast"),
        ("rate_limit", "0/s"),
        ("concurrency", 0),
        ("circuit_breaker", (0, 60, 30)),
        ("circuit_breaker", "often"),
        ("when_limited", "later"),
        ("expires", -1),
        ("unique", "yes"),
    ],
)
def test_wrong_flow_options_name_the_option(queue: stoker.Queue, option: str, value: object) -> None:
    with pytest.raises(InvalidOptionError, match=option):
        queue.task(name="t", **{option: value})(_noop)


def test_unique_tasks_return_the_live_job(queue: stoker.Queue) -> None:
    task = queue.task(name="unique_noop", unique=True)(_noop)
    first = task.delay(1)
    assert task.delay(1) == first
    assert task.delay(2) != first, "other arguments, another key"
    keyed = queue.get_task("add").options(unique_key="nightly")
    assert keyed.delay(1, 2) == keyed.delay(3, 4)
    first.cancel()
    assert task.delay(1) != first, "a finished job frees its key"


def test_when_limited_fail_raises_at_send(queue: stoker.Queue) -> None:
    task = queue.task(name="limited_noop", rate_limit="1/h", when_limited="fail")(_noop)
    task.delay()
    with pytest.raises(RateLimitExceededError) as caught:
        task.delay()
    assert caught.value.key == "task:limited_noop" and caught.value.retry_after > 3000
    waiting = task.options(when_limited="wait").delay()
    assert waiting.status == "pending", "a waiting send is stored"
    assert [limit.key for limit in queue.limits()] == ["task:limited_noop"]
    queue.set_queue_rate_limit("default", "10/s")
    assert {limit.key for limit in queue.limits()} == {"task:limited_noop", "queue:default"}


def test_an_expired_job_raises_job_expired(queue: stoker.Queue) -> None:
    job = queue.get_task("add").options(expires=0.001, delay=3600).delay(1, 2)
    wait_until(lambda: queue.engine.expire_due() or job.status == "expired", what="the expiry")
    assert job.status == "expired" and job.done()
    with pytest.raises(JobExpiredError):
        job.result(timeout=0)
    assert queue.stats()["expired"] == 1


def test_dependencies_run_in_order_and_a_failure_names_the_dependency(
    queue: stoker.Queue, pool: stoker.SupervisorThread, ledger: Path
) -> None:
    a = queue.get_task("add").delay(1, 2)
    b = queue.get_task("add").delay(3, 4)
    fan_in = queue.get_task("add").options(depends_on=[a, b]).delay(5, 6)
    assert fan_in.result(timeout=HANG_GUARD) == 11
    assert [status for _, status in fan_in.dependencies()] == ["complete", "complete"]
    failing = queue.get_task("not_retried").delay(str(ledger))
    dependent = queue.get_task("add").options(depends_on=[failing]).delay(1, 1)
    with pytest.raises(DependencyFailedError) as caught:
        dependent.result(timeout=HANG_GUARD)
    assert (caught.value.dependency_id, caught.value.dependency_status) == (failing.id, "dead")
    assert str(failing.id) in str(caught.value)


def test_schedule_handles(queue: stoker.Queue) -> None:
    add = queue.get_task("add")
    every = add.schedule_every(60, args=(1, 2), name="minutely", missed="catch_up")
    cron = add.options(priority=5, labels={"team": "ops"}).schedule_by_cron(
        "0 3 * * *", args=(3, 4), timezone="Europe/Berlin"
    )
    once = add.schedule_by_time(time.time() + 3600, kwargs={"a": 1, "b": 2})
    assert [s.id for s in queue.schedules()] == [every.id, cron.id, once.id]
    assert queue.get_schedule("minutely") == every
    assert cron.labels == {"team": "ops"} and cron.record().kind == "cron"
    assert every.next_fire_at is not None
    assert add.schedule_every(60, args=(9, 9), name="minutely") == every, "a name is updated, not duplicated"
    every.pause()
    assert every.paused
    every.resume()
    assert not every.paused
    assert once.delete() and not once.delete()
    with pytest.raises(ScheduleNotFoundError):
        queue.get_schedule(once.id)
    with pytest.raises(ScheduleNotFoundError):
        queue.get_schedule("nothing")
    with pytest.raises(InvalidOptionError, match="missed"):
        add.schedule_every(1, missed="sometimes")
    with pytest.raises(InvalidOptionError, match="every"):
        add.schedule_every(0)
    # Labels label the jobs of a schedule, and a direct send alike.
    assert add.options(labels={"a": 1}).delay(1, 2).labels == {"a": 1}


def test_a_one_shot_schedule_runs_in_the_pool(
    queue: stoker.Queue, pool: stoker.SupervisorThread, ledger: Path
) -> None:
    once = (
        queue.get_task("record")
        .options(labels={"origin": "schedule"})
        .schedule_by_time(time.time() - 1, args=(str(ledger), "once"))
    )
    wait_until(lambda: read_ledger(ledger), what="the scheduled job to run")
    (fire,) = once.fires()
    assert fire.outcome == "enqueued" and fire.owner == pool.supervisor.owner
    assert fire.job_id is not None
    # The schedule's labels are its job's labels.
    assert queue.get_job(fire.job_id).labels == {"origin": "schedule"}
    assert once.next_fire_at is None


def test_the_cli_lists_schedules_and_limits(queue: stoker.Queue) -> None:
    queue.get_task("add").schedule_every(30, args=(1, 2), name="every-30s")
    queue.set_queue_rate_limit("default", "5/s")
    env = dict(os.environ, STOKER_TEST_DB=queue.path, PYTHONPATH=child_python_path())

    def run(*args: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "stoker", *args, "apps.tasks:queue"],
            env=env,
            capture_output=True,
            text=True,
            timeout=HANG_GUARD,
            check=True,
        )
        return result.stdout

    (row,) = json.loads(run("schedules", "--json"))
    assert (row["name"], row["task"], row["timing"]) == ("every-30s", "add", "every 30s")
    assert row["next_fire"].startswith("20")
    assert "every-30s" in run("schedules")
    (limit,) = json.loads(run("breakers", "--json"))
    assert (limit["key"], limit["rate"], limit["tokens"]) == ("queue:default", [5, 1000, 1], 1)
