"""Values out of range are refused at the call that gives them, naming the option and its range.

Counts and priorities are signed 64-bit integers in the engine, durations and
times milliseconds; a value beyond them once failed later and elsewhere (a
bare ``OverflowError`` at every send, a supervisor dying at start). Each
reproduction here was an ``OverflowError``, a silent acceptance or a hang
before the checks of ``stoker/_bounds.py``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import pytest

import stoker
from apps import tasks as app
from stoker._base.bounds import (
    INT64_MAX,
    INT64_MIN,
    MAX_DURATION_S,
    MAX_RATE_COUNT,
    MAX_TIMESTAMP_S,
)
from stoker._core import NewJob
from stoker.cli import display
from stoker.flow import limits as flow

HUGE_INT = 10**30
NAN = math.nan
INF = math.inf


def _noop(x: int = 0) -> int:
    return x


# --- task options, at decoration ---------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("priority", HUGE_INT),
        ("priority", -HUGE_INT),
        ("priority", 2**63),
        ("max_retries", HUGE_INT),
        ("max_crashes", HUGE_INT),
        ("retry_backoff", 1e300),
        ("retry_backoff", NAN),
        ("retry_backoff_max", 1e300),
        ("retry_backoff_max", INF),
        ("retry_jitter", NAN),
        ("timeout", 1e300),
        ("timeout", NAN),
        ("timeout", INF),
        ("timeout", 0.0001),
        ("result_ttl", 1e300),
        ("result_ttl", NAN),
        ("soft_timeout", 1e300),
        ("cancel_grace", NAN),
        ("memory_limit_mb", NAN),
        ("memory_limit_mb", 1e300),
        ("expires", 1e300),
        ("expires", NAN),
        ("concurrency", 2**63),
        ("concurrency", HUGE_INT),
        ("rate_limit", f"{HUGE_INT}/s"),
        ("rate_limit", f"{MAX_RATE_COUNT + 1}/s"),
        ("rate_limit", "1/99999999999999999999999s"),
        ("circuit_breaker", (HUGE_INT, 60, 30)),
        ("circuit_breaker", (5, 1e300, 30)),
        ("circuit_breaker", (5, 60, 1e300)),
        ("circuit_breaker", (5, NAN, 30)),
        ("circuit_breaker", (5, 60, NAN)),
        ("circuit_breaker", stoker.CircuitBreaker(HUGE_INT)),
    ],
)
def test_a_task_option_out_of_range_is_refused_at_decoration(
    queue: stoker.Queue, option: str, value: object
) -> None:
    with pytest.raises(stoker.InvalidOptionError, match=f"^{option}") as info:
        queue.task(name="bounded", **{option: value})(_noop)
    assert isinstance(info.value, ValueError)
    assert "bounded" not in queue.tasks


@pytest.mark.parametrize(
    ("option", "value", "range_text"),
    [
        ("priority", HUGE_INT, f"from {INT64_MIN} to {INT64_MAX}"),
        ("max_retries", HUGE_INT, f"from 0 to {INT64_MAX}"),
        ("concurrency", 2**63, f"from 1 to {INT64_MAX}"),
        ("timeout", 1e300, f"at most {MAX_DURATION_S} s"),
        ("result_ttl", NAN, f"at most {MAX_DURATION_S} s"),
    ],
)
def test_the_error_names_the_range(queue: stoker.Queue, option: str, value: object, range_text: str) -> None:
    with pytest.raises(stoker.InvalidOptionError) as info:
        queue.task(name="bounded", **{option: value})(_noop)
    assert str(info.value).startswith(f"{option} must be")
    assert range_text in str(info.value)


# --- per call: options(), map() ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("priority", HUGE_INT),
        ("delay", 1e300),
        ("delay", NAN),
        ("delay", INF),
        ("timeout", 1e300),
        ("timeout", NAN),
        ("max_retries", HUGE_INT),
        ("eta", 1e300),
        ("eta", NAN),
        ("eta", MAX_TIMESTAMP_S + 1),
        ("expires", 1e300),
    ],
)
def test_a_call_option_out_of_range_is_refused_by_options(
    queue: stoker.Queue, option: str, value: object
) -> None:
    task = queue.get_task("add")
    with pytest.raises(stoker.InvalidOptionError, match=f"^{option} must be"):
        task.options(**{option: value})
    assert sum(queue.stats().values()) == 0


def test_map_with_a_priority_out_of_range_is_refused_and_stores_nothing(queue: stoker.Queue) -> None:
    with pytest.raises(stoker.InvalidOptionError, match="priority"):
        queue.get_task("add").options(priority=HUGE_INT).map([(1, 2), (3, 4)])
    assert sum(queue.stats().values()) == 0


def test_the_bounds_themselves_are_accepted_and_stored(queue: stoker.Queue) -> None:
    add = queue.get_task("add")
    top = add.options(priority=INT64_MAX, timeout=MAX_DURATION_S, max_retries=INT64_MAX, delay=MAX_DURATION_S)
    bottom = add.options(priority=INT64_MIN, eta=MAX_TIMESTAMP_S)
    high, low = top.delay(1, 2).record(), bottom.delay(1, 2).record()
    assert (high.priority, high.timeout_ms, high.max_retries) == (INT64_MAX, MAX_DURATION_S * 1000, INT64_MAX)
    assert (low.priority, low.eta_ms) == (INT64_MIN, MAX_TIMESTAMP_S * 1000)
    # The CLI shows the times: the latest one still is a datetime.
    assert display.iso(low.eta_ms) == "9999-12-31T23:59:59.000+00:00"


def test_the_duration_bound_is_the_engines(queue: stoker.Queue) -> None:
    NewJob("add", b"", timeout_ms=MAX_DURATION_S * 1000)
    with pytest.raises(stoker.InvalidOptionError):
        NewJob("add", b"", timeout_ms=MAX_DURATION_S * 1000 + 1)


def test_the_largest_flow_limits_are_stored_as_a_supervisor_stores_them_at_start(queue: stoker.Queue) -> None:
    task = queue.task(
        name="limited",
        concurrency=INT64_MAX,
        rate_limit=f"{MAX_RATE_COUNT}/s",
        circuit_breaker=(INT64_MAX, MAX_DURATION_S, MAX_DURATION_S),
    )(_noop)
    flow.push_limits(queue.engine, [task])
    (limit,) = [limit for limit in queue.limits() if limit.key == "task:limited"]
    assert limit.concurrency == INT64_MAX
    assert limit.breaker == (INT64_MAX, MAX_DURATION_S * 1000, MAX_DURATION_S * 1000)


# --- queue-level limits, schedules ----------------------------------------------------------


@pytest.mark.parametrize("rate", [f"{HUGE_INT}/s", f"{MAX_RATE_COUNT + 1}/m", "1/99999999999999999999999h"])
def test_a_queue_rate_limit_out_of_range_is_refused(queue: stoker.Queue, rate: str) -> None:
    with pytest.raises(stoker.InvalidOptionError, match="rate_limit"):
        queue.set_queue_rate_limit("default", rate)
    assert queue.limits() == []


@pytest.mark.parametrize("every", [1e300, NAN, INF, 0.0001, MAX_DURATION_S + 1])
def test_schedule_every_out_of_range_is_refused(queue: stoker.Queue, every: float) -> None:
    with pytest.raises(stoker.InvalidOptionError, match="every"):
        queue.get_task("add").schedule_every(every, args=(1, 2))
    assert queue.schedules() == []


@pytest.mark.parametrize("when", [1e300, NAN, INF, MAX_TIMESTAMP_S + 1])
def test_schedule_times_out_of_range_are_refused(queue: stoker.Queue, when: float) -> None:
    add = queue.get_task("add")
    with pytest.raises(stoker.InvalidOptionError, match="time"):
        add.schedule_by_time(when, args=(1, 2))
    with pytest.raises(stoker.InvalidOptionError, match="start"):
        add.schedule_every(60, args=(1, 2), start=when)
    assert queue.schedules() == []


# --- the supervisor's options ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("lease", NAN),
        ("lease", INF),
        ("lease", 1e300),
        ("lease", 0),
        ("drain_timeout", NAN),
        ("drain_timeout", INF),
        ("drain_timeout", -1),
        ("kill_grace", NAN),
        ("kill_grace", -1),
        ("prefetch", HUGE_INT),
        ("processes", HUGE_INT),
        ("max_tasks_per_worker", HUGE_INT),
        ("max_worker_memory_mb", NAN),
    ],
)
def test_a_supervisor_option_out_of_range_is_refused(queue: stoker.Queue, option: str, value: object) -> None:
    with pytest.raises(stoker.InvalidOptionError, match=f"^{option} must be"):
        queue.supervisor(**{option: value})


# --- depends_on --------------------------------------------------------------------------------------


def test_a_job_of_another_database_is_refused_as_a_dependency(queue: stoker.Queue, tmp_path: Path) -> None:
    other = stoker.Queue(tmp_path / "other.db")
    other.include(app.queue)
    foreign = other.get_task("add").delay(1, 2)
    # A job of this database with the same id: the foreign job must not be
    # taken for it.
    assert queue.get_task("add").delay(5, 5).id == foreign.id
    with pytest.raises(stoker.InvalidOptionError, match="depends_on") as info:
        queue.get_task("add").options(depends_on=[foreign])
    message = str(info.value)
    assert f"job {foreign.id}" in message
    assert repr(other.path) in message and repr(queue.path) in message
    assert queue.stats().get("waiting", 0) == 0


def test_a_job_of_another_queue_object_on_the_same_file_is_a_dependency(
    queue: stoker.Queue, tmp_path: Path
) -> None:
    same_file = stoker.Queue(os.path.relpath(queue.path))
    same_file.include(app.queue)
    first = same_file.get_task("add").delay(1, 2)
    job = queue.get_task("add").options(depends_on=[first]).delay(3, 4)
    assert job.status == "waiting"
    assert [(dep.id, status) for dep, status in job.dependencies()] == [(first.id, "pending")]


def test_in_memory_queues_are_separate_databases() -> None:
    one, two = stoker.Queue(":memory:"), stoker.Queue(":memory:")
    one.include(app.queue)
    two.include(app.queue)
    job = one.get_task("add").delay(1, 2)
    with pytest.raises(stoker.InvalidOptionError, match="depends_on"):
        two.get_task("add").options(depends_on=[job])
    one.get_task("add").options(depends_on=[job])


# --- the queue's path --------------------------------------------------------------------------------


def test_a_path_given_as_bytes_opens_the_same_database(tmp_path: Path) -> None:
    path = tmp_path / "bytes.db"
    by_bytes = stoker.Queue(os.fsencode(path))
    assert by_bytes.path == str(path)
    by_bytes.include(app.queue)
    job = by_bytes.get_task("add").delay(1, 2)
    assert stoker.Queue(path).get_job(job.id).status == "pending"


class _BytesPath:
    def __init__(self, path: bytes) -> None:
        self.path = path

    def __fspath__(self) -> bytes:
        return self.path


def test_a_path_like_of_bytes_is_accepted(tmp_path: Path) -> None:
    assert stoker.Queue(_BytesPath(os.fsencode(tmp_path / "like.db"))).path == str(tmp_path / "like.db")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("path", "named"),
    [
        (42, "str, bytes or os.PathLike"),
        (None, "str, bytes or os.PathLike"),
        (b"caf\xe9.db", "UTF-8"),
    ],
)
def test_a_path_that_is_not_one_is_refused_naming_it(path: Any, named: str) -> None:
    with pytest.raises(stoker.InvalidOptionError, match=named) as info:
        stoker.Queue(path)
    assert repr(path) in str(info.value)


def test_a_job_id_beyond_64_bits_is_not_found(queue: stoker.Queue) -> None:
    with pytest.raises(stoker.JobNotFoundError, match=str(HUGE_INT)):
        queue.get_job(HUGE_INT)
    with pytest.raises(stoker.JobNotFoundError, match=str(-HUGE_INT)):
        queue.replay(-HUGE_INT)


def test_listing_limits_beyond_64_bits_are_refused(queue: stoker.Queue) -> None:
    with pytest.raises(stoker.InvalidOptionError, match=r"^limit must be"):
        queue.dead_letters(HUGE_INT)
    with pytest.raises(stoker.InvalidOptionError, match=r"^offset must be"):
        queue.dead_letters(1, HUGE_INT)
    schedule = queue.get_task("add").schedule_every(60, args=(1, 2))
    with pytest.raises(stoker.InvalidOptionError, match=r"^limit must be"):
        schedule.fires(HUGE_INT)
    with pytest.raises(stoker.ScheduleNotFoundError):
        queue.get_schedule(HUGE_INT)
