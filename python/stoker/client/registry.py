"""The tasks registered in this process, by database and by name, and how a
worker finds the task of a job (:class:`TaskScope`)."""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import TaskRegisteredTwiceError, UnknownTaskError

if TYPE_CHECKING:
    from .queue import Queue
    from .task import Task


def function_id(func: Callable[..., Any]) -> str:
    """``module.qualname`` of a function, the same in a script and in its workers (``__mp_main__``)."""
    module = getattr(func, "__module__", None) or "?"
    if module == "__mp_main__":
        module = "__main__"
    return f"{module}.{getattr(func, '__qualname__', repr(func))}"


@dataclass(frozen=True)
class TaskScope:
    """Which tasks a supervisor's jobs name: what its workers look a task up by.

    ``database`` is the supervisor's queue's ``database.registry_key``; ``functions``
    the function (:func:`function_id`) of each task of that queue, by name,
    which finds the task in a worker even when no queue of that database was
    made there (a test's ``Queue(path).include(app.queue)``: the worker
    imports only ``app``).
    """

    database: str
    functions: dict[str, str]

    @classmethod
    def of(cls, queue: Queue) -> TaskScope:
        return cls(
            queue.database.registry_key, {name: function_id(t.func) for name, t in queue.tasks.items()}
        )


class TaskRegistry(Mapping[str, "Task[Any, Any]"]):
    """Every task registered in this process, by database and by name.

    Task names are per database: queues of different databases may each have
    a task ``t``, and they may be different functions. Within one database a
    name means one function, whichever queue object registered it: a job's
    row names its task only, and a worker of that database finds the task by
    that name among the tasks of its supervisor's database (:class:`TaskScope`).

    As a mapping, it holds the task registered last under each name, of any
    database. It keeps those alive; the tasks of each database are held
    weakly, so a queue dropped (an Executor's temporary one, say) does not
    stay in memory, with its database connection, for ever.
    """

    def __init__(self) -> None:
        self._by_database: dict[str, weakref.WeakValueDictionary[str, Task[Any, Any]]] = {}
        self._latest: dict[str, Task[Any, Any]] = {}

    def register(self, task: Task[Any, Any]) -> None:
        """Add ``task``; TaskRegisteredTwiceError if its database has another function under its name."""
        tasks = self._by_database.setdefault(task.queue.database.registry_key, weakref.WeakValueDictionary())
        existing = tasks.get(task.name)
        if existing is not None and function_id(existing.func) != function_id(task.func):
            raise TaskRegisteredTwiceError(
                task.name, function_id(existing.func), function_id(task.func), database=existing.queue.path
            )
        tasks[task.name] = task
        self._latest[task.name] = task

    def find(self, name: str, scope: TaskScope | None = None) -> Task[Any, Any] | None:
        """The task of the jobs named ``name`` of ``scope``'s supervisor; None if there is none here.

        First a task of the supervisor's database; then one of any database
        that is the function the supervisor's queue registered under that
        name; without a scope (or a name the supervisor's queue does not
        have), the task of that name if every database here means the same
        function by it.
        """
        function = None
        if scope is not None:
            tasks = self._by_database.get(scope.database)
            task = tasks.get(name) if tasks is not None else None
            if task is not None:
                return task
            function = scope.functions.get(name)
        latest = self._latest.get(name)
        if function is not None:
            if latest is not None and function_id(latest.func) == function:
                return latest
            return next((t for t in self._named(name) if function_id(t.func) == function), None)
        if len({function_id(t.func) for t in self._named(name)}) > 1:
            return None
        return latest

    def unknown(self, name: str, scope: TaskScope | None = None) -> UnknownTaskError:
        """The error for a job whose task :meth:`find` does not find, saying why."""
        functions = sorted({function_id(t.func) for t in self._named(name)})
        if len(functions) > 1:
            where = f" and by none of this worker's database ({scope.database})" if scope else ""
            return UnknownTaskError(
                name,
                f"task {name!r} is registered here by queues of other databases, as different "
                f"functions ({', '.join(functions)}){where}: register it on a queue of this database",
            )
        return UnknownTaskError(name)

    def queues(self) -> list[Queue]:
        """The queues of the registered tasks, each once, in the order their databases came."""
        queues: list[Queue] = []
        for task in [*(t for tasks in self._by_database.values() for t in tasks.values()), *self.values()]:
            if all(task.queue is not q for q in queues):
                queues.append(task.queue)
        return queues

    def _named(self, name: str) -> list[Task[Any, Any]]:
        """The tasks of every database registered under ``name``."""
        return [task for tasks in self._by_database.values() if (task := tasks.get(name)) is not None]

    def __getitem__(self, name: str) -> Task[Any, Any]:
        return self._latest[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._latest)

    def __len__(self) -> int:
        return len(self._latest)


#: Every task registered in this process. A worker process looks the task of
#: each job up here, by its name and its supervisor's TaskScope, after
#: importing the modules that define them.
REGISTRY = TaskRegistry()
