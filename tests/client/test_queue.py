"""The queue API without worker processes: options, sending, bad input, inspection."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

import stoker
from apps import tasks as app
from conftest import HANG_GUARD
from stoker._base import serialization, signing
from stoker._core import Engine


def test_calling_a_task_runs_it_in_process(queue: stoker.Queue) -> None:
    assert queue.get_task("add")(2, 3) == 5
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


def test_unknown_job_id_is_a_key_error(queue: stoker.Queue) -> None:
    with pytest.raises(stoker.JobNotFoundError) as info:
        queue.get_job(123456)
    assert isinstance(info.value, KeyError)
    assert info.value.job_id == 123456
    assert "123456" in str(info.value)


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


def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(b"these are my notes, not a database" * 100)
    with pytest.raises(stoker.NotAStokerDatabaseError) as info:
        stoker.Queue(path)
    assert str(path) in str(info.value)


def test_a_foreign_sqlite_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE users (id INTEGER PRIMARY KEY)")
    connection.close()
    with pytest.raises(stoker.NotAStokerDatabaseError, match=r"app\.db"):
        stoker.Queue(path)


def test_the_database_persists_across_queues(tmp_path: Path) -> None:
    first = stoker.Queue(tmp_path / "jobs.db")
    first.include(app.queue)
    job = first.get_task("add").delay(1, 1)
    second = stoker.Queue(tmp_path / "jobs.db")
    assert second.get_job(job.id).status == "pending"


def test_cancel_pending_job(queue: stoker.Queue) -> None:
    job = queue.get_task("add").delay(1, 2)
    assert job.cancel() == "cancelled"
    assert job.status == "cancelled"
    with pytest.raises(stoker.JobCancelledError):
        job.result(timeout=1)
    assert job.cancel() == "cancelled"


def test_result_timeout_names_the_job(queue: stoker.Queue) -> None:
    job = queue.get_task("add").delay(1, 2)
    with pytest.raises(stoker.ResultTimeoutError) as info:
        job.result(timeout=0.01)
    assert info.value.job_id == job.id
    assert isinstance(info.value, TimeoutError)


def test_replay_refuses_a_job_that_is_not_dead(queue: stoker.Queue) -> None:
    job = queue.get_task("add").delay(1, 2)
    with pytest.raises(stoker.JobStateError, match="replay"):
        queue.replay(job.id)


def test_errors_pickle_round_trip() -> None:
    import pickle

    samples: list[BaseException] = [
        stoker.JobNotFoundError(3),
        stoker.JobStateError(3, "running", "replay"),
        stoker.UnknownTaskError("x"),
        stoker.NotAStokerDatabaseError("/p", "why"),
        stoker.SchemaVersionError("/p", 1, 2),
        stoker.TaskTimeoutError("late", job_id=1, attempt=2),
        stoker.WorkerLostError("gone", job_id=1, attempt=2),
        stoker.RemoteTaskError("msg", type_name="a.B", remote_traceback="tb", job_id=1),
        stoker.JobCancelledError(5),
        stoker.ResultTimeoutError(5, 1.5),
        stoker.TaskRegisteredTwiceError("t", "a.f", "b.g", "/tmp/x.db"),
    ]
    for error in samples:
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error)
        assert str(copy) == str(error)
        assert copy.__dict__ == error.__dict__


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


def test_values_the_standard_pickler_cannot_take_travel_by_value() -> None:
    class Point:  # A local class: only cloudpickle can take it.
        def __init__(self, x: int) -> None:
            self.x = x

    class FromMain:
        pass

    FromMain.__module__ = "__main__"  # As if defined in a script: a worker has no such module.
    scale = 3
    point, from_main, closure = serialization.loads(
        serialization.dumps((Point(2), FromMain(), lambda v: v * scale))
    )
    assert (point.x, type(from_main).__name__, closure(2)) == (2, "FromMain", 6)
    assert serialization.loads(serialization.dumps({"plain": [1, 2.5, "x"]})) == {"plain": [1, 2.5, "x"]}


# --- task names are per database ---------------------------------------------------------------


def test_queues_of_two_databases_each_have_their_own_task_of_one_name() -> None:
    from apps import twins

    assert twins.left.get_task("t").func is twins.left_t.func
    assert twins.right.get_task("t").func is twins.right_t.func
    # Each database's workers run that database's function.
    with twins.left.start_worker(processes=1) as left, twins.right.start_worker(processes=1) as right:
        assert left.wait_started(HANG_GUARD) and right.wait_started(HANG_GUARD)
        on_left, on_right = twins.left_t.delay(1), twins.right_t.delay(2)
        assert on_left.result(timeout=HANG_GUARD) == ("left", 1)
        assert on_right.result(timeout=HANG_GUARD) == ("right", 2)


def test_a_queue_including_one_of_two_tasks_of_one_name_runs_that_one(tmp_path: Path) -> None:
    from apps import twins

    # A worker of this database imports apps.twins, where no queue of this
    # database exists: it finds the task by the function this queue has.
    tested = stoker.Queue(tmp_path / "right.db")
    tested.include(twins.right)
    job = tested.get_task("t").delay(3)
    tested.run_worker(processes=1, until_idle=True, install_signal_handlers=False)
    assert job.result(timeout=0) == ("right", 3)


def test_one_database_has_one_function_per_task_name(tmp_path: Path) -> None:
    first = stoker.Queue(tmp_path / "one.db")
    same_file = stoker.Queue(tmp_path / "one.db")
    first.task(name="t")(app.add.func)
    with pytest.raises(stoker.TaskRegisteredTwiceError) as info:
        same_file.task(name="t")(app.record.func)
    message = str(info.value)
    assert "apps.tasks.add" in message and "apps.tasks.record" in message
    assert repr(str(tmp_path / "one.db")) in message
    assert info.value.database == str(tmp_path / "one.db")
    # Another database may use the name for another function.
    stoker.Queue(tmp_path / "two.db").task(name="t")(app.record.func)


def test_a_name_meaning_different_functions_elsewhere_is_not_guessed(tmp_path: Path) -> None:
    from apps import twins
    from stoker.client.task import REGISTRY, TaskScope

    elsewhere = TaskScope(str(tmp_path / "elsewhere.db"), {})
    assert REGISTRY.find("t", elsewhere) is None
    error = REGISTRY.unknown("t", elsewhere)
    assert isinstance(error, stoker.UnknownTaskError)
    assert "apps.twins.left_t" in str(error) and "apps.twins.right_t" in str(error)
    assert REGISTRY.find("t", TaskScope.of(twins.left)) is twins.left_t
