"""The send path (``client/send.py``): what ``delay``, ``map`` and ``send`` store.

Plain sends (``delay`` and ``map`` without per-call options) store the task's
template with each call's payload; they must store exactly the jobs the
general path (``send.send_calls``, one job built per call) stores."""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

import stoker
from apps import tasks as app
from stoker._base import serialization, signing
from stoker._core import Engine
from stoker.client import send
from stoker.client.options import DEFAULT_CALL
from stoker.client.task import Task

# Columns that hold a time: compared relative to the job's creation time.
TIME_COLUMNS = ("eta_ms", "expires_ms")


def echo(*args: Any, **kwargs: Any) -> Any:
    return args, kwargs


def make_queue(path: Path, **queue_options: Any) -> tuple[stoker.Queue, Task[Any, Any], Task[Any, Any]]:
    queue = stoker.Queue(path, **queue_options)
    plain = queue.task(name="sends.plain")(echo)
    rich = queue.task(
        name="sends.rich",
        queue="reports",
        priority=3,
        max_retries=2,
        max_crashes=4,
        retry_backoff=0.5,
        retry_backoff_max=10,
        retry_jitter=0.1,
        timeout=5,
        result_ttl=60,
        expires=30,
    )(echo)
    return queue, plain, rich


def stored_rows(path: Path, ids: list[int]) -> list[dict[str, Any]]:
    """The rows of jobs ``ids``, in that order, without their id and with times relative to creation."""
    with sqlite3.connect(path) as db:
        db.row_factory = sqlite3.Row
        rows = []
        for job_id in ids:
            row = dict(db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())
            del row["id"]
            for column in TIME_COLUMNS:
                if row[column] is not None:
                    row[column] -= row["created_ms"]
            del row["created_ms"]
            rows.append(row)
    return rows


def general_path(queue: stoker.Queue, task: Task[Any, Any], calls: list[tuple[Any, ...]]) -> list[int]:
    """The jobs of ``calls``, sent one job built per call."""
    jobs = [send.send_calls(queue, [(task, task.options_, DEFAULT_CALL, args, {})])[0] for args in calls]
    return [job.id for job in jobs]


# Small arguments, one larger than a small row, and ones only cloudpickle takes.
CALLS: list[tuple[Any, ...]] = [(i, "x" * i) for i in range(20)] + [(b"y" * 5000,), (lambda v: v,), ()]


@pytest.mark.parametrize("task_name", ["sends.plain", "sends.rich"])
def test_a_plain_delay_stores_the_job_the_general_path_builds(tmp_path: Path, task_name: str) -> None:
    queue, *_ = make_queue(tmp_path / "jobs.db")
    task = queue.get_task(task_name)
    plain = [task.delay(*args).id for args in CALLS]
    general = general_path(queue, task, CALLS)
    assert stored_rows(tmp_path / "jobs.db", plain) == stored_rows(tmp_path / "jobs.db", general)


@pytest.mark.parametrize("task_name", ["sends.plain", "sends.rich"])
def test_a_plain_map_stores_the_jobs_the_general_path_builds(tmp_path: Path, task_name: str) -> None:
    queue, *_ = make_queue(tmp_path / "jobs.db")
    task = queue.get_task(task_name)
    calls = [(i,) for i in range(150)] + CALLS
    plain = [job.id for job in task.map(calls)]
    assert plain == sorted(plain)
    general = general_path(queue, task, calls)
    assert stored_rows(tmp_path / "jobs.db", plain) == stored_rows(tmp_path / "jobs.db", general)


def test_plain_sends_of_a_signed_queue_are_sealed_as_the_general_path_seals(tmp_path: Path) -> None:
    queue, plain, _ = make_queue(tmp_path / "signed.db", secret="k")
    ids = [plain.delay(1, key="v").id, *(job.id for job in plain.map([(2,), (3,)]))]
    engine = stoker._core.Engine(str(tmp_path / "signed.db"))
    stored = [engine.get(job_id).payload for job_id in ids]
    assert all(payload.startswith(signing.MAGIC) for payload in stored)
    unsealed = [queue.sealer.unseal(p, job_id=i, what="payload") for p, i in zip(stored, ids, strict=True)]
    assert [serialization.loads(p) for p in unsealed] == [((1,), {"key": "v"}), ((2,), {}), ((3,), {})]


def test_a_middleware_sees_every_plain_send(tmp_path: Path) -> None:
    queue, plain, _ = make_queue(tmp_path / "jobs.db")
    seen: list[tuple[Any, ...]] = []

    class Recorder(stoker.Middleware):
        def pre_send(self, message: stoker.SendMessage) -> None:
            seen.append(message.args)
            message.labels["seen"] = True

    queue.add_middleware(Recorder())
    job = plain.delay(1)
    plain.map([(2,), (3,)])
    assert seen == [(1,), (2,), (3,)]
    assert job.record().labels == '{"seen": true}'


def test_a_unique_task_sent_twice_while_live_is_one_job(tmp_path: Path) -> None:
    queue = stoker.Queue(tmp_path / "jobs.db")
    unique = queue.task(name="sends.unique", unique=True)(echo)
    first, second, other = unique.delay(1), unique.delay(1), unique.delay(2)
    assert first == second
    assert other != first
    again, new = unique.map([(1,), (3,)])
    assert again == first
    assert new not in (first, other)


def test_plain_sends_follow_a_change_of_the_task_options(tmp_path: Path) -> None:
    _, plain, _ = make_queue(tmp_path / "jobs.db")
    assert plain.delay(1).record().priority == 0
    plain.options_ = replace(plain.options_, priority=9)
    assert plain.delay(1).record().priority == 9
    assert plain.map([(1,), (2,)])[1].record().priority == 9


def test_plain_sends_in_test_mode_run_at_once(tmp_path: Path) -> None:
    queue, plain, _ = make_queue(tmp_path / "jobs.db")
    with queue.test_mode() as outcomes:
        plain.delay(1)
        plain.map([(2,), (3,)])
    assert [outcome.value for outcome in outcomes] == [((1,), {}), ((2,), {}), ((3,), {})]
    assert queue.stats()["pending"] == 0


def test_delay_stores_a_pending_job(queue: stoker.Queue) -> None:
    job = queue.get_task("add").delay(1, 2)
    assert job.status == "pending"
    record = job.record()
    assert record.task_name == "add"
    assert record.queue == "default"
    assert queue.stats()["pending"] == 1
    assert queue.get_job(job.id) == job


def test_per_call_options_override_the_task(queue: stoker.Queue) -> None:
    job = queue.get_task("add").options(priority=7, delay=60, timeout=5, max_retries=9).delay(1, 2)
    record = job.record()
    assert (record.priority, record.timeout_ms, record.max_retries) == (7, 5000, 9)
    assert record.status == "scheduled"
    assert record.eta_ms >= record.created_ms + 60_000


def test_map_sends_many_jobs_in_order(queue: stoker.Queue) -> None:
    jobs = queue.get_task("add").map([(i, i) for i in range(50)])
    assert [j.id for j in jobs] == sorted(j.id for j in jobs)
    assert queue.stats()["pending"] == 50


@pytest.mark.parametrize("calls", [range(3), [(1, 2), 5], ["ab"]])
@pytest.mark.parametrize("how", ["plain", "with_options"])
def test_map_refuses_a_call_that_is_not_a_tuple_naming_it(
    queue: stoker.Queue, calls: object, how: str
) -> None:
    add = queue.get_task("add")
    sender = add if how == "plain" else add.options(priority=1)
    refusal = r"one tuple of positional arguments per call, but call \d+ is"
    with pytest.raises(stoker.SendError, match=refusal):
        sender.map(calls)  # type: ignore[arg-type]
    assert queue.stats()["pending"] == 0, "nothing of the batch is sent"


def test_map_takes_lists_as_calls(queue: stoker.Queue) -> None:
    jobs = queue.get_task("add").map([[1, 2], (3, 4)])  # type: ignore[list-item]
    assert [job.record().status for job in jobs] == ["pending", "pending"]


def test_unknown_task_name_fails_at_send(queue: stoker.Queue) -> None:
    with pytest.raises(stoker.UnknownTaskError) as info:
        queue.send("no.such.task", 1)
    assert info.value.task_name == "no.such.task"
    assert "no.such.task" in str(info.value)


def test_send_by_name(queue: stoker.Queue) -> None:
    job = queue.send("add", 4, 5)
    assert job.record().task_name == "add"


def test_unpicklable_argument_is_named_at_delay(queue: stoker.Queue) -> None:
    lock = threading.Lock()
    with pytest.raises(stoker.SerializationError) as info:
        queue.get_task("add").delay(1, lock)
    message = str(info.value)
    assert "add" in message
    assert "argument 1 ('b')" in message
    assert "lock" in message
    assert queue.stats()["pending"] == 0


def test_unpicklable_keyword_argument_is_named(queue: stoker.Queue) -> None:
    with pytest.raises(stoker.SerializationError, match="keyword argument 'b'"):
        queue.get_task("add").delay(1, b=threading.Lock())


def test_map_of_plain_calls_on_a_signed_queue_seals_each_payload(tmp_path: Path) -> None:
    queue = stoker.Queue(tmp_path / "signed.db", secret="k")
    queue.include(app.queue)
    jobs = queue.get_task("add").map([(i, 1) for i in range(50)])
    assert [j.id for j in jobs] == sorted(j.id for j in jobs)
    engine = Engine(str(tmp_path / "signed.db"))
    for i, job in enumerate(jobs):
        payload = engine.get(job.id).payload
        assert payload.startswith(signing.MAGIC)
        assert serialization.loads(queue.sealer.unseal(payload, job_id=job.id, what="payload")) == (
            (i, 1),
            {},
        )


def test_map_with_a_middleware_still_calls_it_per_job(queue: stoker.Queue) -> None:
    seen: list[tuple[str, tuple[object, ...]]] = []

    class Recorder(stoker.Middleware):
        def pre_send(self, message: stoker.SendMessage) -> None:
            seen.append((message.task_name, message.args))

    queue.add_middleware(Recorder())
    queue.get_task("add").map([(1, 2), (3, 4)])
    assert seen == [(app.add.name, (1, 2)), (app.add.name, (3, 4))]
