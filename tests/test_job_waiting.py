"""Waking the waiters of this process: only those of the jobs that finished."""

from __future__ import annotations

from stoker.job import _Watchers


def test_a_notification_wakes_only_the_waiters_of_its_jobs() -> None:
    watchers = _Watchers()
    first = watchers.watch([1])
    both = watchers.watch([1, 2])
    other = watchers.watch([3])

    watchers.notify([2])

    assert both.is_set()
    assert not first.is_set()
    assert not other.is_set()


def test_a_notification_without_jobs_wakes_every_waiter() -> None:
    watchers = _Watchers()
    events = [watchers.watch([job_id]) for job_id in (1, 2, 3)]

    watchers.notify(None)

    assert all(event.is_set() for event in events)


def test_a_waiter_that_stopped_watching_is_not_woken() -> None:
    watchers = _Watchers()
    gone = watchers.watch([1, 2])
    staying = watchers.watch([2])
    watchers.unwatch([1, 2], gone)

    watchers.notify([1, 2])

    assert not gone.is_set()
    assert staying.is_set()
    # Nothing is kept for jobs nobody waits for any more.
    watchers.unwatch([2], staying)
    assert watchers._events == {}
