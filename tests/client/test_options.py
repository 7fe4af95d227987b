"""Task and call options (``client/options.py``, ``_base/bounds.py``): values out of
range are refused at the call that gives them, naming the option and its range.

Counts and priorities are signed 64-bit integers in the engine, durations and
times milliseconds; a value beyond them once failed later and elsewhere (a
bare ``OverflowError`` at every send, a supervisor dying at start). Each
reproduction here was an ``OverflowError``, a silent acceptance or a hang
before the checks of ``stoker/_base/bounds.py``.
"""

from __future__ import annotations

import math

import pytest

import stoker
from apps import tasks as app
from conftest import HUGE_INT, noop
from stoker._base.bounds import (
    INT64_MAX,
    INT64_MIN,
    MAX_DURATION_S,
    MAX_RATE_COUNT,
    MAX_TIMESTAMP_S,
)
from stoker._core import NewJob
from stoker.cli import display

NAN = math.nan
INF = math.inf


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
        queue.task(name="bounded", **{option: value})(noop)
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
        queue.task(name="bounded", **{option: value})(noop)
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


# --- ids and listing bounds --------------------------------------------------------------------------------


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


# --- wrong values, named ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"max_retries": -1}, "max_retries"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": "soon"}, "timeout"),
        ({"priority": 1.5}, "priority"),
        ({"retry_jitter": 2}, "retry_jitter"),
        ({"retry_backoff": 10, "retry_backoff_max": 1}, "retry_backoff"),
        ({"queue": ""}, "queue"),
        ({"retry_on": [42]}, "retry_on"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_wrong_task_options_are_named(queue: stoker.Queue, options: dict[str, object], named: str) -> None:
    with pytest.raises(stoker.InvalidOptionError, match=named) as info:
        queue.task(**options)(app.add.func)  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError)


def test_wrong_per_call_options_are_named(queue: stoker.Queue) -> None:
    task = queue.get_task("add")
    with pytest.raises(stoker.InvalidOptionError, match="delay"):
        task.options(delay=-1)
    with pytest.raises(stoker.InvalidOptionError, match="delay or eta"):
        task.options(delay=1, eta=2)
