"""Errors that cross from a worker process back to the caller.

In the worker, :func:`capture` turns an exception into a
:class:`CapturedError`: its qualified type name, message, formatted traceback
(with the whole ``__cause__``/``__context__`` chain) and, when the exception
survives a pickle round trip, the pickled exception itself (signed, on a queue
with a secret). The engine stores those fields as one error record per failed
attempt.

Whatever a task raises, capturing it never fails and the record can always be
stored (:func:`storable`, which the supervisor applies again to whatever a
worker sent): text that UTF-8 cannot encode (a lone surrogate, from a file
name decoded with ``os.fsdecode``) is stored with those characters written as
``\\udcXX`` (the ``backslashreplace`` policy), and on PostgreSQL, whose
text cannot hold them, NUL characters as ``\\x00``; text beyond
``MESSAGE_MAX_CHARS`` or ``TRACEBACK_MAX_CHARS`` (tens to hundreds of millions of
characters) is cut, saying how much was left out. The text columns are for
people, and show every character faithfully (a backslash the message really
had is not doubled, so the escape is for reading, not for decoding back); the
exact original comes back through the pickled exception, which keeps the
message as it was, surrogates included.

In the caller, :func:`rebuild` turns a record back into an exception: the
original type with its attributes when it unpickles (after its signature is
checked, on a signed queue), a stoker error of the stored type when the record
was written by stoker itself without a pickle (an expired lease comes back as
:class:`~stoker.errors.LeaseExpiredError`), otherwise a
:class:`~stoker.errors.RemoteTaskError` stand-in that keeps the type name,
message and traceback. Either way the remote traceback is attached as
``__cause__`` (a :class:`~stoker.errors.RemoteTraceback`), the way
``concurrent.futures`` does, so a printed traceback shows the worker's frames.
"""

from __future__ import annotations

import logging
import pickle
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import errors as stoker_errors
from ..errors import RemoteTaskError, RemoteTraceback, StorageBusyError, TaskFailedError
from . import serialization

if TYPE_CHECKING:
    from .._core import Engine

log = logging.getLogger("stoker.supervisor")

#: The longest message and traceback an error record keeps, in characters,
#: and the largest pickled exception; past them, text is cut (with a note of
#: how much) and a pickle is left out (the caller then gets a RemoteTaskError
#: stand-in). Anything below crosses whole (a 10 MB message does, and so does
#: a traceback that chains several exceptions with such messages: each is
#: printed in it). The bounds keep a whole record of ASCII text well under the
#: 10**9 bytes SQLite takes in one row (a record of wider characters past it is
#: stored as the plain record of ``fail_storably``); lower bounds would cost
#: less database per failed attempt and cut more.
MESSAGE_MAX_CHARS = 32 * 2**20
TRACEBACK_MAX_CHARS = 128 * 2**20
EXCEPTION_PICKLE_MAX_BYTES = 256 * 2**20
#: What a stored type name of an unnamable class says.
UNKNOWN_TYPE = "<unknown type>"


@dataclass(frozen=True)
class CapturedError:
    """The parts of an exception that are stored in the error history."""

    exc_type: str
    message: str
    traceback: str
    exc_pickle: bytes | None


def storable_text(text: str, limit: int | None = None, *, keep_nul: bool = True) -> str:
    """``text`` as the database can always store it (see the module documentation).

    Text UTF-8 encodes (without NUL characters, unless ``keep_nul``: SQLite
    keeps them, PostgreSQL does not) and within ``limit`` is returned as it
    is, so the result of this function is too.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if not keep_nul and "\x00" in text:
        text = text.replace("\x00", "\\x00")
    if limit is not None and len(text) > limit:
        # The note counts within the limit, so that text made storable once is left as it is.
        note = f"... [{len(text)} characters, the rest not stored]"
        text = text[: max(0, limit - len(note))] + note
    return text


def _text_of(value: object) -> str:
    """``value`` as a ``str``, whatever it is (a ``str`` subclass, or anything else)."""
    if type(value) is str:
        return value
    try:
        if isinstance(value, str):
            return str.__str__(value)
    except BaseException:  # A hostile __class__ property.
        pass
    try:
        return f"<not text: {object.__repr__(value)}>"
    except BaseException:
        return "<not text>"


def storable(captured: object, *, keep_nul: bool = True) -> CapturedError:
    """A :class:`CapturedError` whose every field the engine stores as it is.

    ``captured`` is whatever arrived (a worker's message may hold anything):
    something that is not a :class:`CapturedError` becomes a record that says
    so. ``keep_nul=False`` escapes NUL characters too (for PostgreSQL).
    """
    if not isinstance(captured, CapturedError):
        return CapturedError(
            exc_type=UNKNOWN_TYPE,
            message=f"the worker sent an error stoker cannot read: {_text_of(type(captured).__qualname__)}",
            traceback="",
            exc_pickle=None,
        )
    exc_pickle = captured.exc_pickle
    if type(exc_pickle) is not bytes or len(exc_pickle) > EXCEPTION_PICKLE_MAX_BYTES:
        exc_pickle = None
    return CapturedError(
        exc_type=storable_text(_text_of(captured.exc_type), MESSAGE_MAX_CHARS, keep_nul=keep_nul),
        message=storable_text(_text_of(captured.message), MESSAGE_MAX_CHARS, keep_nul=keep_nul),
        traceback=storable_text(_text_of(captured.traceback), TRACEBACK_MAX_CHARS, keep_nul=keep_nul),
        exc_pickle=exc_pickle,
    )


def qualified_name(cls: type) -> str:
    """``module.QualName`` of a class (``builtins.ValueError``)."""
    module = cls.__module__
    if module == "__mp_main__":
        module = "__main__"
    return f"{module}.{cls.__qualname__}"


def _type_name(exc: BaseException) -> str:
    try:
        cls = type(exc)
        module = cls.__module__
        if module == "__mp_main__":
            module = "__main__"
        return f"{_text_of(module)}.{_text_of(cls.__qualname__)}"
    except BaseException:
        return UNKNOWN_TYPE


def capture(exc: BaseException, seal: Callable[[bytes], bytes] | None = None) -> CapturedError:
    """Describe ``exc`` so that it can be stored and re-raised elsewhere; never raises.

    ``seal`` signs the pickled exception (``Queue.sealer.seal`` of a signed queue).
    Every part is taken on its own: an exception whose ``__str__``,
    ``__repr__`` or ``__reduce__`` raises still leaves a record of what could
    be read.
    """
    exc_type = _type_name(exc)
    try:
        message = _text_of(str(exc))
    except BaseException as str_error:  # Even sys.exit() from a __str__ must not lose the error.
        message = f"<str() of the exception failed: {_describe(str_error)}>"
    try:
        formatted = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    except BaseException as format_error:
        formatted = f"<the traceback could not be formatted: {_describe(format_error)}>"
    exc_pickle = _pickle_if_it_round_trips(exc)
    if exc_pickle is not None and seal is not None:
        try:
            exc_pickle = seal(exc_pickle)
        except BaseException:
            exc_pickle = None
    return storable(CapturedError(exc_type, message, formatted, exc_pickle))


def _describe(error: BaseException) -> str:
    """``Type: message`` of an error raised while describing another, without trusting it either."""
    name = _type_name(error)
    try:
        return f"{name}: {_text_of(str(error))}"
    except BaseException:
        return name


def _pickle_if_it_round_trips(exc: BaseException) -> bytes | None:
    try:
        data = serialization.dumps_exception(exc)
        if len(data) > EXCEPTION_PICKLE_MAX_BYTES:
            return None
        # Find out here, in the worker, whether it unpickles: a failure in the
        # caller would hide the error behind a second one.
        serialization.loads(data)
        return data
    except BaseException:  # Even sys.exit() from a __reduce__ must not lose the error.
        return None


#: Checks and strips a stored pickle's signature: ``Queue.sealer.unseal``.
Unseal = Callable[..., bytes]


def rebuild(
    *,
    exc_type: str,
    message: str,
    traceback_text: str,
    exc_pickle: bytes | None,
    job_id: int | None = None,
    attempt: int | None = None,
    unseal: Unseal | None = None,
) -> BaseException:
    """The exception a caller should see for a stored error record.

    With ``unseal`` (a signed queue), the pickled exception's signature is
    checked before it is unpickled: a record written without the secret
    raises :class:`~stoker.errors.SecurityError` naming the job and the
    attempt, and is never unpickled.
    """
    exc: BaseException | None = None
    if exc_pickle is not None:
        if unseal is not None:
            exc_pickle = unseal(exc_pickle, job_id=job_id, what=f"error record of attempt {attempt}")
        try:
            loaded: Any = pickle.loads(exc_pickle)
            if isinstance(loaded, BaseException):
                exc = loaded
        except Exception:
            exc = None
    if exc is None:
        exc = _stoker_error(exc_type, message, job_id, attempt)
    if exc is None:
        exc = RemoteTaskError(
            message, type_name=exc_type, remote_traceback=traceback_text, job_id=job_id, attempt=attempt
        )
    if traceback_text:
        _attach_remote_traceback(exc, RemoteTraceback(traceback_text))
    return exc


def _stoker_error(
    exc_type: str, message: str, job_id: int | None, attempt: int | None
) -> BaseException | None:
    """One of stoker's own errors, by its stored type name: the records stoker writes
    without a pickle (an expired lease, a timeout, a lost worker, a result too large).

    Only classes built from a message (and a failed attempt's job and attempt)
    are rebuilt; None for any other name.
    """
    module, _, name = exc_type.rpartition(".")
    if module != stoker_errors.__name__ or name not in stoker_errors.__all__:
        return None
    cls = getattr(stoker_errors, name)
    try:
        if issubclass(cls, TaskFailedError):
            error: BaseException = cls(message, job_id=job_id, attempt=attempt)
        elif issubclass(cls, stoker_errors.StokerError) and not any(
            "__init__" in vars(klass) for klass in cls.__mro__ if issubclass(klass, stoker_errors.StokerError)
        ):
            error = cls(message)
        else:
            return None
    except TypeError:  # Built from other fields (RemoteTaskError): the stand-in says it all.
        return None
    return error


def fail_storably(
    engine: Engine,
    job_id: int,
    token: int,
    kind: str,
    captured: object,
    worker: str,
    retryable: bool,
    usage: str | None,
) -> str:
    """Store a failed attempt whatever its error holds; the engine's outcome (retry, dead, stale).

    The record is made storable first (``remote_errors.storable``: escaped,
    bounded). If the engine still refuses it for anything but a busy
    database, a plain record that says what happened is stored instead, so
    that the job's outcome is never held up by its error's contents. An
    outage raises, as for any outcome, and the whole is tried again later.
    """
    record = storable(captured, keep_nul=engine.backend == "sqlite")
    retryable = retryable is True  # From a worker's message: nothing else than a bool is taken for one.
    if usage is not None and (type(usage) is not str or not usage.isascii()):
        usage = None  # Written by the worker's meter as ASCII JSON; anything else is not its.

    def store(record: CapturedError, worker: str, usage: str | None) -> str:
        outcome, _ = engine.fail(
            job_id,
            token,
            kind=kind,
            exc_type=record.exc_type,
            message=record.message,
            traceback=record.traceback,
            exc_pickle=record.exc_pickle,
            worker=worker,
            retryable=retryable,
            usage=usage,
        )
        return outcome

    try:
        return store(record, worker, usage)
    except StorageBusyError:
        raise
    except Exception as refused:
        log.error("the error record of job %s was refused (%r); storing a plain one instead", job_id, refused)
        reason = refused
    plain = CapturedError(
        exc_type=_ascii(record.exc_type, PLAIN_RECORD_CHARS),
        message=_ascii(
            f"[stoker could not store this error as it was sent ({qualified_name(type(reason))}: "
            f"{reason}); the start of its message follows] {record.message}",
            PLAIN_RECORD_CHARS,
        ),
        traceback=_ascii(record.traceback, PLAIN_RECORD_CHARS),
        exc_pickle=None,
    )
    return store(plain, _ascii(worker, PLAIN_RECORD_CHARS), None)


#: How much of an error's text the plain record keeps when the record as sent was refused.
PLAIN_RECORD_CHARS = 4096


def _ascii(text: str, limit: int) -> str:
    """``text`` in printable ASCII (anything else escaped), at most about ``limit`` characters."""
    escaped = storable_text(text, keep_nul=False).encode("ascii", "backslashreplace").decode("ascii")
    return escaped if len(escaped) <= limit else escaped[:limit] + "..."


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
