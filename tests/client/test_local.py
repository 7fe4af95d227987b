"""This process's side of a database (``client/local.py``): which queues share
one, and the paths a queue accepts."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

import stoker
from apps import tasks as app


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
