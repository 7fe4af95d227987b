"""The user's side of schedules (``flow/schedule.py``): handles, bounds, a fire
in the pool."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest

import stoker
from conftest import read_ledger, wait_until
from stoker._base.bounds import (
    MAX_DURATION_S,
    MAX_TIMESTAMP_S,
)
from stoker._core import Engine, NewJob
from stoker.errors import (
    InvalidOptionError,
    ScheduleNotFoundError,
)
from stoker.flow import schedule


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


@pytest.mark.parametrize("every", [1e300, math.nan, math.inf, 0.0001, MAX_DURATION_S + 1])
def test_schedule_every_out_of_range_is_refused(queue: stoker.Queue, every: float) -> None:
    with pytest.raises(stoker.InvalidOptionError, match="every"):
        queue.get_task("add").schedule_every(every, args=(1, 2))
    assert queue.schedules() == []


@pytest.mark.parametrize("when", [1e300, math.nan, math.inf, MAX_TIMESTAMP_S + 1])
def test_schedule_times_out_of_range_are_refused(queue: stoker.Queue, when: float) -> None:
    add = queue.get_task("add")
    with pytest.raises(stoker.InvalidOptionError, match="time"):
        add.schedule_by_time(when, args=(1, 2))
    with pytest.raises(stoker.InvalidOptionError, match="start"):
        add.schedule_every(60, args=(1, 2), start=when)
    assert queue.schedules() == []


class _View:
    """A queue as the flow layer sees it (``flow/host.py``): an engine, and a wake-up that records."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.database = self
        self.wakes: list[bool] = []

    def wake(self, *, new_work: bool = True) -> None:
        self.wakes.append(new_work)


def test_schedules_need_only_an_engine_and_a_wake_up(tmp_path: Path) -> None:
    view = _View(Engine(str(tmp_path / "jobs.db")))
    created = schedule.create(view, NewJob("t", b"payload"), kind="interval", every_ms=60_000, name="n")
    # A supervisor sleeping until its next fire is told to look again, not to claim.
    assert view.wakes == [False]
    created.pause()
    created.resume()
    assert view.wakes == [False, False]
    assert [s.id for s in schedule.schedules(view)] == [created.id]
    assert schedule.get_schedule(view, "n") == created
    assert schedule.get_schedule(view, "n").paused is False
