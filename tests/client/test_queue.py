"""The queue facade without worker processes: opening a database, inspection, replay."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

import stoker
from apps import tasks as app
from stoker._base import serialization


def test_calling_a_task_runs_it_in_process(queue: stoker.Queue) -> None:
    assert queue.get_task("add")(2, 3) == 5
    assert queue.stats()["pending"] == 0


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
