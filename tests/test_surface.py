"""The user surface through worker processes: async sends, context, progress, events,
middlewares and hooks, plugins, outcomes, gather, resource limits, recycling, test mode,
signing.

Seed counterparts: see ``tests/SEEDS.md``.
"""

from __future__ import annotations

import asyncio
import pickle
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

import stoker
from apps import surface
from conftest import HANG_GUARD, database_files, wait_until, written
from stoker._base.serialization import dumps


@pytest.fixture
def squeue(tmp_path: Path) -> stoker.Queue:
    q = stoker.Queue(tmp_path / "surface.db")
    q.include(surface.queue)
    return q


@pytest.fixture
def spool(squeue: stoker.Queue) -> Iterator[stoker.SupervisorThread]:
    handle = squeue.start_worker(processes=2, drain_timeout=0.0)
    assert handle.wait_started(HANG_GUARD), handle.error
    yield handle
    handle.stop(HANG_GUARD)


def task(q: stoker.Queue, name: str) -> stoker.Task:  # type: ignore[type-arg]
    return q.get_task(f"surface.{name}")


# --- sending and results ----------------------------------------------------------------


def test_async_send_result_and_gather(squeue: stoker.Queue, spool: stoker.SupervisorThread) -> None:
    async def main() -> tuple[object, list[object], dict[str, object]]:
        job = await task(squeue, "injected").delay_async(5)
        first = await job.result_async(timeout=HANG_GUARD)
        jobs = [await task(squeue, "injected").options(priority=1).delay_async(i) for i in range(3)]
        many = await stoker.gather_async(jobs, timeout=HANG_GUARD)
        named = await squeue.send_async("surface.about_me")
        outcome = await named.outcome_async(timeout=HANG_GUARD)
        return first, many, outcome.value

    first, many, about = asyncio.run(main())
    assert first[0] == 5  # type: ignore[index]
    assert [value[0] for value in many] == [0, 1, 2]  # type: ignore[index]
    assert about["task"] == "surface.about_me"  # type: ignore[index]


def test_labels_and_context_reach_the_task(squeue: stoker.Queue, spool: stoker.SupervisorThread) -> None:
    job = task(squeue, "about_me").options(labels={"run": 7, "who": "ada"}).delay()
    about = job.result(timeout=HANG_GUARD)
    assert about == {
        "job_id": job.id,
        "attempt": 1,
        "labels": {"run": 7, "who": "ada", "stamped": "yes"},
        "task": "surface.about_me",
    }
    assert job.labels == about["labels"]
    x, job_id = task(squeue, "injected").delay(3).result(timeout=HANG_GUARD)
    assert x == 3 and isinstance(job_id, int)


def test_wrong_labels_are_named(squeue: stoker.Queue) -> None:
    with pytest.raises(stoker.InvalidOptionError, match="labels"):
        task(squeue, "about_me").options(labels={"x": object()})


def test_outcome_record(squeue: stoker.Queue, spool: stoker.SupervisorThread) -> None:
    outcome = task(squeue, "burn").options(labels={"k": 1}).delay(200_000).outcome(timeout=HANG_GUARD)
    assert outcome.ok and outcome.status == "complete"
    assert outcome.value == sum(i * i for i in range(200_000)) + 20 * 1024 * 1024
    assert outcome.attempts == 1
    assert outcome.labels == {"k": 1, "stamped": "yes"}
    assert outcome.worker is not None and outcome.worker.startswith(spool.supervisor.owner)
    assert outcome.execution_time is not None and outcome.execution_time > 0
    assert outcome.usage["cpu_user_s"] + outcome.usage["cpu_system_s"] > 0
    # The 20 MiB block the task made shows in its own peak.
    assert outcome.usage["peak_rss_kib"] >= 20 * 1024
    assert outcome.raise_for_error() is outcome


def test_outcome_of_a_failure_and_raise_for_error(
    squeue: stoker.Queue, spool: stoker.SupervisorThread, tmp_path: Path
) -> None:
    outcome = task(squeue, "hooked").delay(-1, ledger=str(tmp_path / "l")).outcome(timeout=HANG_GUARD)
    assert not outcome.ok and outcome.status == "dead"
    assert isinstance(outcome.error, ValueError)
    with pytest.raises(ValueError, match="negative"):
        outcome.raise_for_error()


def test_no_result_task_says_so(squeue: stoker.Queue, spool: stoker.SupervisorThread) -> None:
    job = task(squeue, "no_result").delay(4)
    with pytest.raises(stoker.NoResultError) as info:
        job.result(timeout=HANG_GUARD)
    assert info.value.job_id == job.id
    assert job.status == "complete"
    assert job.outcome().value is None


def test_gather_in_order_first_error_and_timeout(
    squeue: stoker.Queue, spool: stoker.SupervisorThread, tmp_path: Path
) -> None:
    jobs = [task(squeue, "injected").delay(i) for i in range(10)]
    assert [value[0] for value in stoker.gather(jobs, timeout=HANG_GUARD)] == list(range(10))
    ledger = str(tmp_path / "l")
    mixed = [task(squeue, "hooked").delay(1, ledger=ledger), task(squeue, "hooked").delay(-1, ledger=ledger)]
    with pytest.raises(ValueError):
        stoker.gather(mixed, timeout=HANG_GUARD)
    values = stoker.gather(mixed, timeout=HANG_GUARD, return_exceptions=True)
    assert values[0] == 2 and isinstance(values[1], ValueError)
    waiting = task(squeue, "injected").options(delay=3600).delay(0)
    with pytest.raises(stoker.ResultTimeoutError) as info:
        stoker.gather([jobs[0], waiting], timeout=0.05)
    assert info.value.job_id == waiting.id


def test_result_now_and_max_retries_wrapper(
    squeue: stoker.Queue, spool: stoker.SupervisorThread, tmp_path: Path
) -> None:
    waiting = task(squeue, "injected").options(delay=3600).delay(0)
    with pytest.raises(stoker.ResultNotReadyError):
        waiting.result_now()
    job = task(squeue, "broken_middleware").delay()
    with pytest.raises(stoker.MaxRetriesExceededError) as info:
        job.result(timeout=HANG_GUARD, original=False)
    assert isinstance(info.value.__cause__, stoker.MiddlewareError)


# --- task context ---------------------------------------------------------------------------


def test_progress_is_visible_while_the_job_runs(
    squeue: stoker.Queue, spool: stoker.SupervisorThread, tmp_path: Path
) -> None:
    release = tmp_path / "release"
    job = task(squeue, "with_progress").delay(str(release))
    progress = wait_until(lambda: job.progress, what="the first progress report")
    assert progress == stoker.Progress(1, 3, "first step")
    assert job.status == "running"
    release.touch()
    assert job.result(timeout=HANG_GUARD) == "finished"
    assert job.progress == stoker.Progress(3, 3, "done")


def test_soft_timeout_raises_in_the_task(squeue: stoker.Queue, spool: stoker.SupervisorThread) -> None:
    with pytest.raises(stoker.SoftTimeoutError, match=r"soft timeout of 0\.05 s"):
        task(squeue, "soft_limited").delay().result(timeout=HANG_GUARD)


def test_cooperative_cancel_tells_the_task_and_keeps_the_worker(
    squeue: stoker.Queue, spool: stoker.SupervisorThread, tmp_path: Path
) -> None:
    marker = tmp_path / "started"
    job = task(squeue, "cooperative").delay(str(marker))
    wait_until(written(marker), what="the task to start")
    worker_pid = int(marker.read_text())
    assert job.cancel() == "requested"
    with pytest.raises(stoker.JobCancelledError):
        job.result(timeout=HANG_GUARD)
    assert job.status == "cancelled" and job.errors == []
    # The task stopped itself: its worker process lives on and takes the next job.
    assert worker_pid in spool.supervisor.worker_pids()
    assert psutil.Process(worker_pid).is_running()


def test_reject_ends_dead_without_retry(
    squeue: stoker.Queue, spool: stoker.SupervisorThread, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger"
    job = task(squeue, "rejecting").delay(str(ledger))
    with pytest.raises(stoker.RejectedError, match="bad input"):
        job.result(timeout=HANG_GUARD)
    assert surface.lines(ledger) == ["run"]


def test_requeue_does_not_count_a_failure_and_is_bounded(
    squeue: stoker.Queue, spool: stoker.SupervisorThread, tmp_path: Path
) -> None:
    job = task(squeue, "requeue_once").delay(str(tmp_path / "once"))
    assert job.result(timeout=HANG_GUARD) == 2
    record = job.record()
    assert (record.attempt, record.failures, record.crashes) == (2, 0, 0)
    assert job.errors == []
    forever = task(squeue, "requeue_forever").delay(str(tmp_path / "forever"))
    with pytest.raises(stoker.RequeueLimitError):
        forever.result(timeout=HANG_GUARD)
    assert len(surface.lines(tmp_path / "forever")) == 4


def test_plugin_handler_supplies_a_result_or_the_error_stands(
    squeue: stoker.Queue, spool: stoker.SupervisorThread
) -> None:
    assert task(squeue, "plugin").delay(123).result(timeout=HANG_GUARD) == 123
    with pytest.raises(stoker.PluginTriggerError) as info:
        task(squeue, "plugin").delay(None).result(timeout=HANG_GUARD)
    assert info.value.details == {"answer": None}


# --- events and state ---------------------------------------------------------------------


def test_worker_startup_fills_state_in_every_worker_replacements_included(
    squeue: stoker.Queue, tmp_path: Path
) -> None:
    note = tmp_path / "shutdown"
    with squeue.start_worker(processes=1, drain_timeout=0.0, max_tasks_per_worker=1) as handle:
        assert handle.wait_started(HANG_GUARD)
        first = task(squeue, "state").delay(str(note)).result(timeout=HANG_GUARD)
        # The first worker was recycled after its task; a fresh one ran its own startup.
        second = task(squeue, "state").delay().result(timeout=HANG_GUARD)
    for connection, async_ready, pid in (first, second):
        assert connection == f"connection of {pid}"
        assert async_ready is True
    assert first[2] != second[2]
    assert surface.lines(note) == [f"shutdown {first[2]}"]


def test_client_events_run_with_the_queue_context(squeue: stoker.Queue) -> None:
    surface.client_events.clear()
    with squeue:
        assert surface.client_events == ["startup"]
    assert surface.client_events == ["startup", "shutdown"]


def test_unknown_event_is_named(squeue: stoker.Queue) -> None:
    with pytest.raises(stoker.InvalidOptionError, match="worker_start"):
        squeue.add_event_handler("worker_start", print)


def test_a_failing_startup_handler_stops_the_supervisor_with_the_cause(tmp_path: Path) -> None:
    from apps import broken_startup

    q = stoker.Queue(tmp_path / "broken.db")
    q.include(broken_startup.queue)
    with pytest.raises(stoker.WorkerStartupError, match="cannot reach the license server"):
        q.run_worker(processes=1, install_signal_handlers=False)


# --- middlewares and hooks -------------------------------------------------------------------


def test_middlewares_and_hooks_run_at_their_stages(
    squeue: stoker.Queue, spool: stoker.SupervisorThread, tmp_path: Path
) -> None:
    ledger = str(tmp_path / "ledger")
    ok = task(squeue, "hooked").options(labels={"ledger": ledger}).delay(4, ledger=ledger)
    assert ok.result(timeout=HANG_GUARD) == 8
    bad = task(squeue, "hooked").options(labels={"ledger": ledger}).delay(-1, ledger=ledger)
    with pytest.raises(ValueError):
        bad.result(timeout=HANG_GUARD)
    assert surface.lines(ledger) == [
        "pre_execute surface.hooked",
        "post_execute 8",
        "on_success surface.hooked 8",
        "pre_execute surface.hooked",
        "on_error ValueError",
        "on_failure surface.hooked ValueError",
    ]
    assert {ok.id, bad.id} <= set(surface.recorder.sent)
    wait_until(lambda: (bad.id, "dead") in surface.recorder.saved, what="post_save of the failure")
    assert (ok.id, "complete") in surface.recorder.saved


def test_a_raising_middleware_is_named_and_loses_no_job(
    squeue: stoker.Queue, spool: stoker.SupervisorThread
) -> None:
    job = task(squeue, "broken_middleware").delay()
    with pytest.raises(
        stoker.MiddlewareError, match=r"middleware apps\.surface\.Recorder\.pre_execute raised"
    ):
        job.result(timeout=HANG_GUARD)
    assert [e.type_name for e in job.errors] == ["stoker.errors.MiddlewareError"] * 2


def test_a_raising_pre_send_refuses_the_send(squeue: stoker.Queue) -> None:
    with pytest.raises(stoker.SendError, match=r"Recorder\.pre_send raised") as info:
        task(squeue, "refuse_send").delay()
    assert info.value.task_name == "surface.refuse_send"
    assert squeue.stats()["pending"] == 0


# --- resources -----------------------------------------------------------------------------


def test_memory_limit_kills_with_the_memory_error(
    squeue: stoker.Queue, spool: stoker.SupervisorThread, tmp_path: Path
) -> None:
    marker = tmp_path / "allocated"
    job = task(squeue, "hog").delay(str(marker))
    with pytest.raises(stoker.MemoryLimitExceededError, match="over its memory limit of 150 MiB") as info:
        job.result(timeout=HANG_GUARD)
    assert isinstance(info.value, MemoryError)
    (error,) = job.errors
    assert error.type_name == "stoker.errors.MemoryLimitExceededError"
    assert task(squeue, "injected").delay(1).result(timeout=HANG_GUARD)[0] == 1


@pytest.mark.parametrize("option", [{"max_tasks_per_worker": 1}, {"max_worker_memory_mb": 1}])
def test_recycling_loses_nothing(squeue: stoker.Queue, option: dict[str, float]) -> None:
    with squeue.start_worker(processes=2, drain_timeout=0.0, **option) as handle:
        assert handle.wait_started(HANG_GUARD)
        jobs = [task(squeue, "pid").delay() for _ in range(12)]
        pids = stoker.gather(jobs, timeout=HANG_GUARD)
    # Every worker was retired after its one task: each job ran in its own process.
    assert len(set(pids)) == 12
    assert squeue.stats()["complete"] == 12


# --- test mode ------------------------------------------------------------------------------


def test_test_mode_runs_in_process_with_the_same_semantics(squeue: stoker.Queue, tmp_path: Path) -> None:
    ledger = tmp_path / "flaky"
    with squeue.test_mode() as results:
        job = task(squeue, "flaky").delay(str(ledger))
        about = task(squeue, "about_me").options(labels={"t": 1}).delay()
        failing = task(squeue, "rejecting").delay(str(tmp_path / "r"))
    assert [r.status for r in results] == ["complete", "complete", "dead"]
    assert results[0].value == 3 and results[0].attempts == 3
    assert [e.type_name for e in job.errors] == ["builtins.ConnectionError"] * 2
    assert results[1].value["labels"] == {"t": 1, "stamped": "yes"}
    assert isinstance(results[2].error, stoker.RejectedError)
    assert failing.id == results[2].job_id
    assert about.id == results[1].job_id
    # Nothing reached the queue's real database.
    assert squeue.stats()["complete"] == 0


# --- signing and registration ---------------------------------------------------------------------


def test_signed_payloads_run_and_forged_ones_are_refused_unread(tmp_path: Path) -> None:
    q = stoker.Queue(tmp_path / "signed.db", secret="surface-secret")
    q.include(surface.signed)
    tripwire = tmp_path / "tripwire"
    forged_payload = dumps(((surface.Tripwire(str(tripwire)), 1), {}))
    with q.start_worker(processes=1, drain_timeout=0.0) as handle:
        assert handle.wait_started(HANG_GUARD)
        assert q.get_task("surface.signed_add").delay(2, 3).result(timeout=HANG_GUARD) == 5
        (forged_id,) = q.engine.enqueue([stoker._core.NewJob("surface.signed_add", forged_payload)])
        forged = q.get_job(forged_id)
        with pytest.raises(stoker.SecurityError, match="payload"):
            forged.result(timeout=HANG_GUARD)
    assert not tripwire.exists()
    assert forged.status == "dead" and len(forged.errors) == 1


def test_a_result_without_the_signature_is_refused(tmp_path: Path) -> None:
    q = stoker.Queue(tmp_path / "signed.db", secret="surface-secret")
    q.include(surface.signed)
    engine = q.engine
    (job_id,) = engine.enqueue([stoker._core.NewJob("surface.signed_add", b"x")])
    claimed = engine.claim(["default"], 1, "forger", 60_000)[0]
    engine.complete(job_id, claimed.token, pickle.dumps(surface.Tripwire(str(tmp_path / "trip"))))
    with pytest.raises(stoker.SecurityError, match="result"):
        q.get_job(job_id).result()
    assert not (tmp_path / "trip").exists()


def test_registering_another_function_under_a_taken_name_fails(squeue: stoker.Queue) -> None:
    def other() -> None:
        pass

    with pytest.raises(stoker.TaskRegisteredTwiceError, match=r"surface\.pid"):
        squeue.task(name="surface.pid")(other)
    # The same function again (a module imported twice) is fine.
    squeue.task(name="surface.pid")(surface.pid.func)


def test_worker_processes_do_not_hold_the_database(
    squeue: stoker.Queue, spool: stoker.SupervisorThread
) -> None:
    task(squeue, "pid").delay().result(timeout=HANG_GUARD)
    for pid in spool.supervisor.worker_pids():
        paths = {f.path for f in psutil.Process(pid).open_files()}
        assert paths & database_files(squeue.path) == set(), paths


def test_one_handler_for_several_events_and_the_builder(tmp_path: Path) -> None:
    seen: list[str] = []
    q = stoker.Queue(tmp_path / "events.db")

    @q.on_event("client_startup", "client_shutdown")
    def both(state: stoker.State) -> None:
        seen.append("both")

    assert q.with_event_handlers("client_startup", lambda state: seen.append("built")) is q
    with q:
        pass
    assert seen == ["both", "built", "both"]


def test_ready_async(squeue: stoker.Queue) -> None:
    job = task(squeue, "pid").options(delay=3600).delay()
    assert asyncio.run(job.ready_async()) is False
    job.cancel()
    assert asyncio.run(job.ready_async()) is True
