"""The user's side of flow control (``flow/limits.py``): limit options, unique
sends, expiry, dependencies, and the CLI's listing of schedules and limits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import stoker
from conftest import HANG_GUARD, HUGE_INT, child_python_path, noop, wait_until
from stoker._base.bounds import (
    INT64_MAX,
    MAX_DURATION_S,
    MAX_RATE_COUNT,
)
from stoker.errors import (
    DependencyFailedError,
    InvalidOptionError,
    JobExpiredError,
    RateLimitExceededError,
)
from stoker.flow import limits as flow


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
        queue.task(name="t", **{option: value})(noop)


def test_unique_tasks_return_the_live_job(queue: stoker.Queue) -> None:
    task = queue.task(name="uniquenoop", unique=True)(noop)
    first = task.delay(1)
    assert task.delay(1) == first
    assert task.delay(2) != first, "other arguments, another key"
    keyed = queue.get_task("add").options(unique_key="nightly")
    assert keyed.delay(1, 2) == keyed.delay(3, 4)
    first.cancel()
    assert task.delay(1) != first, "a finished job frees its key"


def test_when_limited_fail_raises_at_send(queue: stoker.Queue) -> None:
    task = queue.task(name="limitednoop", rate_limit="1/h", when_limited="fail")(noop)
    task.delay()
    with pytest.raises(RateLimitExceededError) as caught:
        task.delay()
    assert caught.value.key == "task:limitednoop" and caught.value.retry_after > 3000
    waiting = task.options(when_limited="wait").delay()
    assert waiting.status == "pending", "a waiting send is stored"
    assert [limit.key for limit in queue.limits()] == ["task:limitednoop"]
    queue.set_queue_rate_limit("default", "10/s")
    assert {limit.key for limit in queue.limits()} == {"task:limitednoop", "queue:default"}


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


def test_the_largest_flow_limits_are_stored_as_a_supervisor_stores_them_at_start(queue: stoker.Queue) -> None:
    task = queue.task(
        name="limited",
        concurrency=INT64_MAX,
        rate_limit=f"{MAX_RATE_COUNT}/s",
        circuit_breaker=(INT64_MAX, MAX_DURATION_S, MAX_DURATION_S),
    )(noop)
    flow.push_limits(queue.engine, [task])
    (limit,) = [limit for limit in queue.limits() if limit.key == "task:limited"]
    assert limit.concurrency == INT64_MAX
    assert limit.breaker == (INT64_MAX, MAX_DURATION_S * 1000, MAX_DURATION_S * 1000)


@pytest.mark.parametrize("rate", [f"{HUGE_INT}/s", f"{MAX_RATE_COUNT + 1}/m", "1/99999999999999999999999h"])
def test_a_queue_rate_limit_out_of_range_is_refused(queue: stoker.Queue, rate: str) -> None:
    with pytest.raises(stoker.InvalidOptionError, match="rate_limit"):
        queue.set_queue_rate_limit("default", rate)
    assert queue.limits() == []
