"""Schedules and flow control through the binding, on the engine's manual clock.

Nothing sleeps: time moves only when a test calls ``advance_clock``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import stoker
from stoker._core import Engine, NewJob
from stoker.errors import (
    CircuitBreakerOpenError,
    InvalidOptionError,
    RateLimitExceededError,
    ScheduleCancelledError,
    ScheduleNotFoundError,
)
from stoker.flow import schedule

T0 = 1_700_000_000_000  # 2023-11-14T22:13:20Z
LEASE = 30_000


@pytest.fixture
def core(tmp_path: Path) -> Engine:
    return Engine(str(tmp_path / "jobs.db"), clock_ms=T0)


def job(task: str = "t", **options: object) -> NewJob:
    return NewJob(task, b"payload", **options)  # type: ignore[arg-type]


def claim(core: Engine, limit: int = 10) -> list[int]:
    return [c.id for c in core.claim(["default"], limit, "sup", LEASE)]


def fail(core: Engine, limit: int = 10) -> None:
    for claimed in core.claim(["default"], limit, "sup", LEASE):
        core.fail(claimed.id, claimed.token, kind="error", exc_type="builtins.ValueError", message="boom")


# --- schedules -------------------------------------------------------------------


def test_interval_cron_and_one_shot_fire_at_their_times(core: Engine) -> None:
    every = core.create_schedule(job(), kind="interval", every_ms=1000)
    cron = core.create_schedule(job(), kind="cron", cron="*/2 * * * * *", timezone="UTC")
    once = core.create_schedule(job(), kind="once", at_ms=T0 + 1500)
    assert core.get_schedule(cron).next_fire_ms == T0 + 2000
    fired: dict[int, int] = {every: 0, cron: 0, once: 0}
    for _ in range(6):
        core.advance_clock(500)
        for schedule_id, outcome, job_id in core.fire_due("sup"):
            assert outcome == "enqueued" and job_id is not None
            fired[schedule_id] += 1
    # 3 s passed: every second 3 times, every even second (T0 is on one) once
    # at T0+2000 (T0+4000 not yet), the one-shot once.
    assert fired == {every: 3, cron: 1, once: 1}
    assert core.get_schedule(once).next_fire_ms is None
    assert core.stats()["pending"] == 5
    assert core.next_fire_ms() == T0 + 4000


def test_cron_in_a_time_zone(core: Engine) -> None:
    berlin = core.create_schedule(job(), kind="cron", cron="0 3 * * *", timezone="Europe/Berlin")
    utc = core.create_schedule(job(), kind="cron", cron="0 3 * * *")
    assert core.get_schedule(utc).next_fire_ms - core.get_schedule(berlin).next_fire_ms == 3_600_000
    with pytest.raises(InvalidOptionError, match="Mars/Base"):
        core.create_schedule(job(), kind="cron", cron="0 3 * * *", timezone="Mars/Base")
    with pytest.raises(InvalidOptionError, match="every minute"):
        core.create_schedule(job(), kind="cron", cron="every minute")


@pytest.mark.parametrize(
    ("missed", "outcome", "pending"), [("skip", "missed", 0), ("catch_up", "enqueued", 1)]
)
def test_missed_fires_follow_the_policy(core: Engine, missed: str, outcome: str, pending: int) -> None:
    schedule_id = core.create_schedule(job(), kind="interval", every_ms=1000, missed=missed)
    core.advance_clock(10_500)  # every supervisor was down for ten periods
    assert [(sid, name) for sid, name, _ in core.fire_due("sup")] == [(schedule_id, outcome)]
    (fire,) = core.schedule_fires(schedule_id)
    assert (fire.outcome, fire.missed) == (outcome, 9)
    assert core.stats()["pending"] == pending
    assert core.get_schedule(schedule_id).next_fire_ms == T0 + 11_000
    core.advance_clock(500)
    assert [o for _, o, _ in core.fire_due("sup")] == ["enqueued"], "on schedule again"


class Maintenance:
    """A source that vetoes the fires of schedules labelled as in maintenance."""

    def __init__(self) -> None:
        self.seen: list[int] = []

    def pre_send(self, handle: stoker.Schedule) -> None:
        self.seen.append(handle.id)
        if handle.labels.get("maintenance"):
            raise ScheduleCancelledError("in the maintenance window")


def test_a_source_vetoes_one_fire_and_the_veto_is_recorded(core: Engine, tmp_path: Path) -> None:
    queue = stoker.Queue(tmp_path / "jobs.db")
    source = Maintenance()
    queue.add_schedule_source("test-maintenance", source)
    vetoed = core.create_schedule(
        job(), kind="interval", every_ms=1000, source="test-maintenance", labels='{"maintenance": true}'
    )
    allowed = core.create_schedule(job(), kind="interval", every_ms=1000, source="test-maintenance")
    broken = core.create_schedule(job(), kind="interval", every_ms=1000, source="nobody-registered-this")
    core.advance_clock(1000)
    assert core.fire_due("sup") == [], "fire_due leaves schedules with a source to the supervisor"
    assert schedule.fire_due(core, queue, "sup") == 1
    assert sorted(source.seen) == [vetoed, allowed]
    (veto,) = core.schedule_fires(vetoed)
    assert (veto.outcome, veto.message, veto.job_id) == ("vetoed", "in the maintenance window", None)
    assert core.schedule_fires(allowed)[0].outcome == "enqueued"
    (error,) = core.schedule_fires(broken)
    assert error.outcome == "error" and "nobody-registered-this" in error.message
    assert core.get_schedule(vetoed).next_fire_ms == T0 + 2000, "only that fire was skipped"


def test_a_fire_is_enqueued_once_when_supervisors_race(core: Engine, tmp_path: Path) -> None:
    other = Engine(str(tmp_path / "jobs.db"), clock_ms=T0)
    schedule_id = core.create_schedule(job(), kind="interval", every_ms=100)
    outcomes = []
    for _ in range(100):
        core.advance_clock(100)
        other.advance_clock(100)
        fire_a = core.due_schedules()[0].next_fire_ms
        fire_b = other.due_schedules()[0].next_fire_ms
        assert fire_a is not None and fire_a == fire_b
        outcomes.append(core.fire_schedule(schedule_id, fire_a, owner="a")[0])
        outcomes.append(other.fire_schedule(schedule_id, fire_b, owner="b")[0])
    assert outcomes.count("enqueued") == 100 and outcomes.count("lost") == 100
    assert core.stats()["pending"] == 100


def test_pause_resume_delete_and_names(core: Engine) -> None:
    schedule_id = core.create_schedule(job(), kind="interval", every_ms=1000, name="nightly")
    assert (
        core.create_schedule(job(priority=3), kind="interval", every_ms=1000, name="nightly") == schedule_id
    )
    core.pause_schedule(schedule_id)
    core.advance_clock(5000)
    assert core.fire_due("sup") == [] and core.get_schedule(schedule_id).paused
    core.pause_schedule(schedule_id, paused=False)
    assert [o for _, o, _ in core.fire_due("sup")] == ["missed"], "skip is the default policy"
    assert core.delete_schedule(schedule_id)
    with pytest.raises(ScheduleNotFoundError):
        core.get_schedule(schedule_id)
    with pytest.raises(KeyError):
        core.pause_schedule(schedule_id)


# --- flow control -------------------------------------------------------------------


def test_a_token_bucket_holds_jobs_back_and_says_when_to_wake(core: Engine) -> None:
    core.set_limits("task", "t", rate=(2, 1000, 1))
    ids = core.enqueue([job() for _ in range(3)])
    assert claim(core) == ids[:1]
    assert claim(core) == []
    assert core.status(ids[1]) == "pending", "held back, not failed"
    assert core.next_wakeup_ms() == T0 + 500
    core.advance_clock(500)
    assert claim(core) == ids[1:2]
    with pytest.raises(RateLimitExceededError) as caught:
        core.enqueue([job(fail_when_limited=True)])
    assert (caught.value.key, caught.value.retry_after) == ("task:t", 0.5)
    (limit,) = core.limits()
    assert (limit.key, limit.rate, limit.tokens) == ("task:t", (2, 1000, 1), 0)


def test_a_queue_rate_limit_covers_every_task(core: Engine) -> None:
    core.set_limits("queue", "default", rate=(1, 1000, 2))
    core.enqueue([job("a"), job("b"), job("c")])
    assert len(claim(core)) == 2
    core.advance_clock(1000)
    assert len(claim(core)) == 1
    core.set_limits("queue", "default")
    assert core.limits() == []


def test_concurrency_is_limited_across_engines(core: Engine, tmp_path: Path) -> None:
    other = Engine(str(tmp_path / "jobs.db"), clock_ms=T0)
    core.set_limits("task", "t", concurrency=3)
    core.enqueue([job() for _ in range(10)])
    assert len(claim(core, 2)) == 2
    assert len(other.claim(["default"], 10, "other", LEASE)) == 1
    assert claim(core) == []
    assert core.limits()[0].running == 3


def test_breaker_transitions(core: Engine) -> None:
    core.set_limits("task", "t", breaker=(3, 60_000, 10_000))
    core.enqueue([job() for _ in range(8)])
    fail(core, 3)
    (limit,) = core.limits()
    assert (limit.breaker_state, limit.recent_failures, limit.open_until_ms) == ("open", 3, T0 + 10_000)
    assert claim(core) == []
    with pytest.raises(CircuitBreakerOpenError) as caught:
        core.enqueue([job(fail_when_limited=True)])
    assert caught.value.task_name == "t"
    core.advance_clock(10_000)
    (probe,) = core.claim(["default"], 10, "sup", LEASE)
    assert core.limits()[0].breaker_state == "half_open"
    assert claim(core) == [], "one probe at a time"
    assert core.complete(probe.id, probe.token, None)
    assert core.limits()[0].breaker_state == "closed"
    assert len(claim(core)) == 4


def test_unique_keys_expiry_and_retention(core: Engine) -> None:
    first, again = core.enqueue([job(unique_key="k"), job(unique_key="k")])
    assert first == again and core.get(first).unique_key == "k"
    expiring = core.enqueue([job(expires_after_ms=1000, delay_ms=5000)])[0]
    assert core.get(expiring).expires_ms == T0 + 1000
    core.advance_clock(1000)
    assert core.expire_due() == [expiring]
    assert core.status(expiring) == "expired"
    kept = core.enqueue([job(result_ttl_ms=100)])[0]
    (claimed,) = [c for c in core.claim(["default"], 10, "sup", LEASE) if c.id == kept]
    core.fail(
        kept, claimed.token, kind="error", exc_type="builtins.ValueError", message="boom", retryable=False
    )
    assert len(core.errors(kept)) == 1
    core.advance_clock(100)
    assert core.purge_expired_results() == 1
    assert core.errors(kept) == [] and core.status(kept) == "dead"


def test_dependencies_wait_then_run_or_fail(core: Engine) -> None:
    a, b = core.enqueue([job(), job()])
    fan_in = core.enqueue([job(depends_on=[a, b])])[0]
    assert core.status(fan_in) == "waiting"
    first, second = core.claim(["default"], 10, "sup", LEASE)
    core.complete(first.id, first.token, None)
    core.complete(second.id, second.token, None)
    assert core.status(fan_in) == "pending"
    assert core.dependencies(fan_in) == [(a, "complete"), (b, "complete")]
    doomed = core.enqueue([job(depends_on=[fan_in])])[0]
    core.cancel(fan_in)
    assert core.status(doomed) == "dead"
    (error,) = core.errors(doomed)
    assert (error.kind, error.exc_type) == ("dependency", "stoker.errors.DependencyFailedError")
    assert f"job {fan_in}" in error.message and "cancelled" in error.message
