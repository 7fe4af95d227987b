"""Jobs run through real worker processes: results, order, retries, kills, crashes, cancellation."""

from __future__ import annotations

from pathlib import Path

import pytest

import stoker
from apps.tasks import QuotaError
from conftest import HANG_GUARD, read_ledger, wait_until, written


def test_result_comes_back(queue: stoker.Queue, pool: stoker.SupervisorThread) -> None:
    jobs = [queue.get_task("add").delay(i, i) for i in range(20)]
    assert [j.result(timeout=HANG_GUARD) for j in jobs] == [2 * i for i in range(20)]
    assert queue.stats()["complete"] == 20


def test_async_task(queue: stoker.Queue, pool: stoker.SupervisorThread) -> None:
    assert queue.get_task("async_add").delay(2, 5).result(timeout=HANG_GUARD) == 7


def test_priority_then_age(queue: stoker.Queue, ledger: Path) -> None:
    record = queue.get_task("record")
    sends = [(0, "low-1"), (5, "high-1"), (0, "low-2"), (9, "top"), (5, "high-2")]
    for priority, tag in sends:
        record.options(priority=priority).delay(str(ledger), tag)
    with queue.start_worker(processes=1, drain_timeout=0.0) as handle:
        wait_until(lambda: queue.stats()["complete"] == 5, what="five jobs")
        assert handle.error is None
    assert [line.split()[0] for line in read_ledger(ledger)] == ["top", "high-1", "high-2", "low-1", "low-2"]


def test_delayed_job_waits_for_its_eta(queue: stoker.Queue, pool: stoker.SupervisorThread) -> None:
    job = queue.get_task("add").options(delay=0.3).delay(1, 1)
    assert job.result(timeout=HANG_GUARD) == 2
    record = job.record()
    assert record.started_ms is not None
    assert record.started_ms >= record.eta_ms >= record.created_ms + 300


def test_retries_with_backoff_then_success(
    queue: stoker.Queue, pool: stoker.SupervisorThread, ledger: Path
) -> None:
    job = queue.get_task("flaky").delay(str(ledger), 2)
    assert job.result(timeout=HANG_GUARD) == 3
    errors = job.errors
    assert [(e.attempt, e.kind, e.type_name) for e in errors] == [
        (1, "error", "builtins.ValueError"),
        (2, "error", "builtins.ValueError"),
    ]
    assert errors[0].message == "failure number 1"
    assert "raise ValueError" in errors[0].traceback
    # The second attempt waited at least the first backoff (50 ms, no jitter).
    assert (errors[1].failed_at - errors[0].failed_at).total_seconds() >= 0.05
    assert job.record().attempt == 3


def test_exhausted_retries_end_dead_then_replay(
    queue: stoker.Queue, pool: stoker.SupervisorThread, ledger: Path
) -> None:
    job = queue.get_task("always_fails").delay(str(ledger))
    with pytest.raises(RuntimeError, match="this always fails") as info:
        job.result(timeout=HANG_GUARD)
    assert isinstance(info.value.__cause__, stoker.RemoteTraceback)
    assert job.status == "dead"
    assert len(read_ledger(ledger)) == 3
    assert [e.attempt for e in job.errors] == [1, 2, 3]
    (letter,) = queue.dead_letters()
    assert (
        letter.job == job and letter.error is not None and letter.error.type_name == "builtins.RuntimeError"
    )
    replayed = queue.replay(job.id)
    assert replayed.id != job.id
    assert replayed.record().replayed_from == job.id
    assert replayed.record().max_retries == job.record().max_retries
    with pytest.raises(RuntimeError):
        replayed.result(timeout=HANG_GUARD)
    assert len(read_ledger(ledger)) == 6


def test_dont_retry_on_goes_dead_at_once(
    queue: stoker.Queue, pool: stoker.SupervisorThread, ledger: Path
) -> None:
    job = queue.get_task("not_retried").delay(str(ledger))
    with pytest.raises(KeyError):
        job.result(timeout=HANG_GUARD)
    assert len(read_ledger(ledger)) == 1


def test_custom_exception_comes_back_whole(queue: stoker.Queue, pool: stoker.SupervisorThread) -> None:
    with pytest.raises(QuotaError) as info:
        queue.get_task("quota").delay("ada", 3).result(timeout=HANG_GUARD)
    assert (info.value.user, info.value.limit) == ("ada", 3)
    assert "raise QuotaError" in info.value.__cause__.tb  # type: ignore[union-attr]


def test_cause_chain_crosses(queue: stoker.Queue, pool: stoker.SupervisorThread) -> None:
    with pytest.raises(RuntimeError) as info:
        queue.get_task("chained").delay().result(timeout=HANG_GUARD)
    assert isinstance(info.value.__cause__, KeyError)


def test_unpicklable_exception_comes_back_as_stand_in(
    queue: stoker.Queue, pool: stoker.SupervisorThread
) -> None:
    with pytest.raises(stoker.RemoteTaskError) as info:
        queue.get_task("unpicklable_error").delay().result(timeout=HANG_GUARD)
    assert info.value.type_name == "apps.tasks.Unpicklable"
    assert "it holds a lock" in str(info.value)
    assert "Unpicklable" in info.value.remote_traceback


def test_sys_exit_in_a_task_is_its_error_and_the_pool_survives(
    queue: stoker.Queue, pool: stoker.SupervisorThread
) -> None:
    with pytest.raises(SystemExit):
        queue.get_task("sys_exit").delay().result(timeout=HANG_GUARD)
    assert queue.get_task("add").delay(1, 1).result(timeout=HANG_GUARD) == 2


def test_cancelled_pending_job_never_starts(queue: stoker.Queue, ledger: Path) -> None:
    job = queue.get_task("record").delay(str(ledger), "cancelled")
    other = queue.get_task("record").delay(str(ledger), "kept")
    assert job.cancel() == "cancelled"
    with queue.start_worker(processes=1, drain_timeout=0.0):
        assert other.result(timeout=HANG_GUARD) == "kept"
    assert [line.split()[0] for line in read_ledger(ledger)] == ["kept"]
    assert job.record().attempt == 0


def test_no_job_waits_behind_a_long_one(
    queue: stoker.Queue, pool: stoker.SupervisorThread, tmp_path: Path
) -> None:
    marker = tmp_path / "started"
    release = tmp_path / "release"
    long_job = queue.get_task("wait_for_file").delay(str(marker), str(release))
    wait_until(written(marker), what="the long job to start")
    short = [queue.get_task("add").delay(i, 1) for i in range(10)]
    assert [j.result(timeout=HANG_GUARD) for j in short] == [i + 1 for i in range(10)]
    assert long_job.status == "running"
    release.touch()
    assert long_job.result(timeout=HANG_GUARD) == "released"


def test_until_idle_drains_and_returns(queue: stoker.Queue) -> None:
    jobs = [queue.get_task("add").delay(i, 0) for i in range(5)]
    queue.run_worker(processes=2, until_idle=True, install_signal_handlers=False)
    assert all(j.status == "complete" for j in jobs)


@pytest.mark.parametrize("prefetch", [-1, 1.5, True, "1"])
def test_prefetch_must_be_a_count(queue: stoker.Queue, prefetch: object) -> None:
    with pytest.raises(stoker.InvalidOptionError, match="prefetch"):
        stoker.Supervisor(queue, prefetch=prefetch)  # type: ignore[arg-type]
