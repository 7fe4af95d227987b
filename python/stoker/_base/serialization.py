"""How arguments, results and errors cross the process boundary.

Everything is pickled at the highest protocol: with the standard pickler
when it can (it is several times faster), and with cloudpickle when it cannot
or when the bytes would refer to ``__main__`` (which a worker does not
import), so that lambdas, closures and classes defined in ``__main__`` travel
by value. A failure is
reported where it happens and names the culprit: an unpicklable argument fails
the ``delay()`` call and names the task and the argument; an unpicklable result
fails the attempt in the worker.
"""

from __future__ import annotations

import inspect
import io
import pickle
from collections.abc import Callable, Iterable
from typing import Any

import cloudpickle

from ..errors import SendError, SerializationError

#: Protocol 5 carries large buffers without an extra copy.
PICKLE_PROTOCOL = pickle.HIGHEST_PROTOCOL
#: The largest result stoker stores: SQLite holds at most 10**9 bytes in one
#: value (its default SQLITE_MAX_LENGTH) and PostgreSQL 1 GiB, and a value
#: past that would fail the whole commit it is in, with the outcomes of the
#: other jobs stored in it. A larger result fails its attempt with a
#: SerializationError instead. Lower only to refuse results sooner.
STORED_VALUE_MAX_BYTES = 900 * 10**6


def dumps(value: Any) -> bytes:
    """Pickle ``value``: by the standard pickler if it can, else by cloudpickle."""
    try:
        data = pickle.dumps(value, protocol=PICKLE_PROTOCOL)
    except Exception:
        pass  # A lambda, a closure, a local class: cloudpickle takes them by value.
    else:
        # Catches "__main__" and "__mp_main__": references to a module that a
        # worker does not have (or a string that merely contains the word,
        # which cloudpickle pickles just as well).
        if b"__main__" not in data:
            return data
    pickled: bytes = cloudpickle.dumps(value, protocol=PICKLE_PROTOCOL)
    return pickled


def loads(data: bytes) -> Any:
    """Unpickle bytes made by :func:`dumps`."""
    return pickle.loads(data)


def dumps_positional_calls(
    task_name: str, func: Callable[..., Any], calls: Iterable[Iterable[Any]]
) -> list[bytes]:
    """:func:`dumps_call` for many calls of positional arguments (``map``), in one loop.

    The standard pickler's attempt of :func:`dumps` is inlined; a call it
    cannot take, or that names ``__main__``, goes through :func:`dumps_call`.

    Every payload is ``(args, {})``, exactly as :func:`dumps_call` makes it:
    one empty dict serves every call, since each ``pickle.dumps`` starts from
    an empty memo and so writes the same bytes for it as for a fresh one.
    """
    no_kwargs: dict[str, Any] = {}
    dump = pickle.dumps
    payloads: list[bytes] = []
    append = payloads.append
    for index, call in enumerate(calls):
        args = call if type(call) is tuple else positional_args(task_name, index, call)
        try:
            data = dump((args, no_kwargs), PICKLE_PROTOCOL)
        except Exception:
            data = b"__main__"  # Not picklable by the standard pickler: take the full path.
        if b"__main__" in data:
            data = dumps_call(task_name, func, args, {})
        append(data)
    return payloads


def positional_args(task_name: str, index: int, call: object) -> tuple[Any, ...]:
    """The arguments of call number ``index`` of a ``map``: a tuple, or a list.

    Anything else is refused rather than unpacked: a string would become one
    argument per character, and a number cannot be unpacked at all.
    """
    if isinstance(call, tuple):
        return call
    if isinstance(call, list):
        return tuple(call)
    raise SendError(
        task_name,
        f"map() takes one tuple of positional arguments per call, but call {index} is "
        f"{call!r} ({type(call).__name__}); for one argument each, write [(x,) for x in ...]",
    )


def dumps_call(
    task_name: str, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> bytes:
    """Pickle the arguments of one call of ``task_name``.

    On failure, find the first argument that cannot be pickled and raise a
    :class:`SerializationError` that names the task and that argument.
    """
    try:
        return dumps((args, kwargs))
    except Exception as whole_error:
        culprit, error = _find_unpicklable(func, args, kwargs)
        if culprit is None:
            raise SerializationError(
                f"cannot send {task_name}: its arguments cannot be pickled: {whole_error!r}"
            ) from whole_error
        raise SerializationError(
            f"cannot send {task_name}: {culprit} cannot be pickled: {error!r}"
        ) from error


def _find_unpicklable(
    func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[str | None, BaseException | None]:
    names = _positional_names(func, len(args))
    for index, value in enumerate(args):
        try:
            dumps(value)
        except Exception as error:
            label = f"argument {index}" + (f" ({names[index]!r})" if names[index] else "")
            return f"{label} of type {type(value).__qualname__}", error
    for name, value in kwargs.items():
        try:
            dumps(value)
        except Exception as error:
            return f"keyword argument {name!r} of type {type(value).__qualname__}", error
    return None, None


def _positional_names(func: Callable[..., Any], count: int) -> list[str | None]:
    try:
        parameters = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError):
        parameters = []
    names: list[str | None] = []
    for index in range(count):
        if index < len(parameters) and parameters[index].kind in (
            inspect.Parameter.POSITIONAL_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
        ):
            names.append(parameters[index].name)
        else:
            names.append(None)
    return names


def dumps_exception(exc: BaseException) -> bytes:
    """Pickle an exception so that it comes back as itself, attributes and chain included.

    ``BaseException.__reduce__`` replays ``self.args`` into ``__init__``, so any
    exception class whose constructor takes other arguments than its message
    (``QuotaError(user, limit)``) pickles but cannot be unpickled. Exceptions
    that keep that default reduction are instead rebuilt without calling
    ``__init__``: ``__new__`` with the same args (or those of a built-in
    reduction, like OSError's), then their ``__dict__``,
    ``__cause__``, ``__context__`` and ``__suppress_context__``. Tracebacks do not
    pickle; the formatted text carries them. A class with its own
    ``__reduce__`` is pickled its own way.
    """
    buffer = io.BytesIO()
    _ExceptionPickler(buffer, protocol=PICKLE_PROTOCOL).dump(exc)
    return buffer.getvalue()


class _ExceptionPickler(cloudpickle.Pickler):  # type: ignore[misc]
    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, BaseException) and _has_builtin_reduce(type(obj)):
            state = dict(getattr(obj, "__dict__", {}))
            # A built-in reduction may carry more than ``args`` (OSError's filename);
            # its arguments are what ``__new__`` is given.
            reduced = obj.__reduce__()
            new_args = obj.args
            if isinstance(reduced, tuple) and len(reduced) > 1 and reduced[0] is type(obj):
                new_args = tuple(reduced[1])
            return (
                _rebuild_exception,
                (
                    type(obj),
                    obj.args,
                    state,
                    obj.__cause__,
                    obj.__context__,
                    obj.__suppress_context__,
                    new_args,
                ),
            )
        return super().reducer_override(obj)


def _has_builtin_reduce(cls: type) -> bool:
    """Whether the class reduces the way a built-in exception does (it defines no reduction itself).

    ``OSError`` and a few others define their own ``__reduce__``, which still
    replays the arguments into the constructor of a subclass that takes others.
    """
    for klass in cls.__mro__:
        if "__reduce__" in vars(klass) or "__reduce_ex__" in vars(klass):
            return klass.__module__ == "builtins"
    return True


def _rebuild_exception(
    cls: type[BaseException],
    args: tuple[Any, ...],
    state: dict[str, Any],
    cause: BaseException | None,
    context: BaseException | None,
    suppress_context: bool,
    new_args: tuple[Any, ...] | None = None,
) -> BaseException:
    exc = cls.__new__(cls, *(args if new_args is None else new_args))
    exc.args = args
    if state:
        exc.__dict__.update(state)
    exc.__cause__ = cause
    exc.__context__ = context
    exc.__suppress_context__ = suppress_context
    return exc
