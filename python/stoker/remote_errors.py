"""Errors that cross from a worker process back to the caller.

In the worker, :func:`capture` turns an exception into a
:class:`CapturedError`: its qualified type name, message, formatted traceback
(with the whole ``__cause__``/``__context__`` chain) and, when the exception
survives a pickle round trip, the pickled exception itself. The engine stores
those fields as one error record per failed attempt.

In the caller, :func:`rebuild` turns a record back into an exception: the
original type with its attributes when it unpickles, otherwise a
:class:`~stoker.errors.RemoteTaskError` stand-in that keeps the type name,
message and traceback. Either way the remote traceback is attached as
``__cause__`` (a :class:`~stoker.errors.RemoteTraceback`), the way
``concurrent.futures`` does, so a printed traceback shows the worker's frames.
"""

from __future__ import annotations

import pickle
import traceback
from dataclasses import dataclass
from typing import Any

from . import serialization
from .errors import RemoteTaskError, RemoteTraceback


@dataclass(frozen=True)
class CapturedError:
    """The parts of an exception that are stored in the error history."""

    exc_type: str
    message: str
    traceback: str
    exc_pickle: bytes | None


def qualified_name(cls: type) -> str:
    """``module.QualName`` of a class (``builtins.ValueError``)."""
    module = cls.__module__
    if module == "__mp_main__":
        module = "__main__"
    return f"{module}.{cls.__qualname__}"


def capture(exc: BaseException) -> CapturedError:
    """Describe ``exc`` so that it can be stored and re-raised elsewhere."""
    try:
        message = str(exc)
    except Exception as str_error:  # A broken __str__ must not lose the error.
        message = f"<str() of the exception failed: {str_error!r}>"
    try:
        formatted = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    except Exception as format_error:
        formatted = f"<the traceback could not be formatted: {format_error!r}>"
    return CapturedError(
        exc_type=qualified_name(type(exc)),
        message=message,
        traceback=formatted,
        exc_pickle=_pickle_if_it_round_trips(exc),
    )


def _pickle_if_it_round_trips(exc: BaseException) -> bytes | None:
    try:
        data = serialization.dumps_exception(exc)
        # Find out here, in the worker, whether it unpickles: a failure in the
        # caller would hide the error behind a second one.
        serialization.loads(data)
        return data
    except BaseException:  # Even sys.exit() from a __reduce__ must not lose the error.
        return None


def rebuild(
    *,
    exc_type: str,
    message: str,
    traceback_text: str,
    exc_pickle: bytes | None,
    job_id: int | None = None,
    attempt: int | None = None,
) -> BaseException:
    """The exception a caller should see for a stored error record."""
    exc: BaseException | None = None
    if exc_pickle is not None:
        try:
            loaded: Any = pickle.loads(exc_pickle)
            if isinstance(loaded, BaseException):
                exc = loaded
        except Exception:
            exc = None
    if exc is None:
        exc = RemoteTaskError(
            message, type_name=exc_type, remote_traceback=traceback_text, job_id=job_id, attempt=attempt
        )
    if traceback_text:
        _attach_remote_traceback(exc, RemoteTraceback(traceback_text))
    return exc


def _attach_remote_traceback(exc: BaseException, remote: RemoteTraceback) -> None:
    """Make the remote traceback the first thing a printed traceback shows.

    It goes at the root of the ``__cause__`` chain that came back with the
    exception (the text already shows the whole chain with its frames).
    """
    root = exc
    seen = {id(exc)}
    while root.__cause__ is not None and id(root.__cause__) not in seen:
        root = root.__cause__
        seen.add(id(root))
    root.__cause__ = remote
