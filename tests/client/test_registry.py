"""The task registry (``client/registry.py``): task names are per database, and a
worker finds the task of a job by its name and its supervisor's scope."""

from __future__ import annotations

from pathlib import Path

import pytest

import stoker
from apps import tasks as app
from conftest import HANG_GUARD


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
    from stoker.client.registry import REGISTRY, TaskScope

    elsewhere = TaskScope(str(tmp_path / "elsewhere.db"), {})
    assert REGISTRY.find("t", elsewhere) is None
    error = REGISTRY.unknown("t", elsewhere)
    assert isinstance(error, stoker.UnknownTaskError)
    assert "apps.twins.left_t" in str(error) and "apps.twins.right_t" in str(error)
    assert REGISTRY.find("t", TaskScope.of(twins.left)) is twins.left_t
