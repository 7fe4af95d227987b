"""Lifecycle events, per-process state, middlewares and hooks.

Events (register with ``@queue.on_event(name)``, ``queue.add_event_handler``
or ``queue.add_event_handlers({...})``; handlers may be sync or async and
receive the process's :class:`State`):

=================  ============================================================
``client_startup``   ``queue.startup()`` / entering ``with queue:``, in the caller
``client_shutdown``  ``queue.shutdown()`` / leaving ``with queue:``, in the caller
``worker_startup``   in each worker process before it takes its first job,
                     replacements after a kill or crash included
``worker_shutdown``  in each worker process at its graceful end
=================  ============================================================

Middlewares (subclass :class:`Middleware`, override what you need) and where
each stage runs:

- ``pre_send`` / ``post_send``: in the caller, around storing the job. A
  raising ``pre_send`` fails the send with :class:`~stoker.errors.SendError`
  naming the middleware; nothing is stored.
- ``pre_execute`` / ``post_execute`` / ``on_error``: in the worker process,
  around the task, because that is where the arguments, the result and the
  live exception are. A raising middleware fails the attempt with a
  :class:`~stoker.errors.MiddlewareError` naming it; the retry policy applies,
  so the job is not lost.
- ``post_save``: in the supervisor, after the outcome is stored, because only
  the supervisor writes storage. A raising one is logged with its name.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, ItemsView, Iterator, KeysView, ValuesView
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .context import JobContext
    from .job import Job

EVENTS = ("client_startup", "client_shutdown", "worker_startup", "worker_shutdown")

EventHandler = Callable[["State"], Any]


class State:
    """Per-process state that startup handlers fill and tasks read (``stoker.worker_state()``)."""

    def __init__(self) -> None:
        self._values: dict[str, Any] = {}

    def set(self, key: str, value: Any) -> None:
        self._values[key] = value

    def get(self, key: str, default: Any = None) -> Any:
        return self._values.get(key, default)

    def delete(self, key: str) -> None:
        del self._values[key]

    def clear(self) -> None:
        self._values.clear()

    def keys(self) -> KeysView[str]:
        return self._values.keys()

    def values(self) -> ValuesView[Any]:
        return self._values.values()

    def items(self) -> ItemsView[str, Any]:
        return self._values.items()

    def __contains__(self, key: object) -> bool:
        return key in self._values

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __getattr__(self, key: str) -> Any:
        try:
            return self.__dict__["_values"][key]
        except KeyError:
            raise AttributeError(key) from None


_process_state = State()


def worker_state() -> State:
    """This process's :class:`State` (the one event handlers receive)."""
    return _process_state


def call_maybe_async(func: Callable[..., Any], *args: Any) -> Any:
    """Call ``func``; if it returns an awaitable, run it to completion."""
    value = func(*args)
    if inspect.isawaitable(value):
        return _run(value)
    return value


def _run(awaitable: Any) -> Any:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_wrap(awaitable))
    raise RuntimeError("an async handler cannot be run from inside a running event loop; use the async API")


async def _wrap(awaitable: Any) -> Any:
    return await awaitable


def handler_name(obj: object) -> str:
    """A readable name for a middleware instance or a function."""
    if inspect.isfunction(obj) or inspect.ismethod(obj):
        return f"{obj.__module__}.{obj.__qualname__}"
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


class Hooks:
    """What a queue runs around its jobs: middlewares, success and failure hooks, plugin handlers.

    The worker process and test mode read them from here; ``Queue`` methods
    (``add_middleware``, ``on_success``, ``on_failure``, ``on_plugin_trigger``)
    fill them.
    """

    __slots__ = ("middlewares", "on_failure", "on_success", "plugin_handlers")

    def __init__(self) -> None:
        self.middlewares: list[Middleware] = []
        self.on_success: list[Callable[..., Any]] = []
        self.on_failure: list[Callable[..., Any]] = []
        self.plugin_handlers: list[Callable[..., Any]] = []


class SendMessage:
    """What a ``pre_send`` middleware sees and may change before a job is stored."""

    def __init__(
        self, task_name: str, args: tuple[Any, ...], kwargs: dict[str, Any], labels: dict[str, Any]
    ) -> None:
        self.task_name = task_name
        self.args = args
        self.kwargs = kwargs
        self.labels = labels


class Middleware:
    """Override the stages you need; each default does nothing."""

    def pre_send(self, message: SendMessage) -> None:
        """Caller side, before the job is stored; may change args, kwargs and labels."""

    def post_send(self, job: Job) -> None:
        """Caller side, after the job is stored."""

    def pre_execute(self, ctx: JobContext, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Worker side, before the task runs."""

    def post_execute(self, ctx: JobContext, result: Any) -> None:
        """Worker side, after the task returned."""

    def on_error(self, ctx: JobContext, error: BaseException) -> None:
        """Worker side, after the task raised."""

    def post_save(self, job_id: int, status: str) -> None:
        """Supervisor side, after the attempt's outcome was stored (``status``: the job's new status)."""
