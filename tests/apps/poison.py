"""Tasks whose errors, results, progress and prints are hostile to the outcome path.

``raise_hostile(kind, text)`` builds one hostile exception of ``kind`` (see
:func:`make_hostile`) in the worker and raises it; the tests throw every kind,
with arbitrary text, at a pool and check that each job ends with exactly one
stored outcome and the pool goes on serving.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import stoker

queue = stoker.Queue(os.environ["STOKER_TEST_DB"])
signed = stoker.Queue(os.environ["STOKER_TEST_DB"], secret="poison-secret")

#: A file name that is not UTF-8, decoded the way Python decodes file names:
#: the byte 0xE9 becomes the lone surrogate U+DCE9.
NOT_UTF8_NAME = os.fsdecode(b"caf\xe9.csv")


@queue.task(name="poison.cannot_parse", max_retries=0)
def cannot_parse() -> NoReturn:
    raise ValueError(f"cannot parse {NOT_UTF8_NAME}")


@queue.task(name="poison.echo")
def echo(value: Any) -> Any:
    return value


@queue.task(name="poison.raise_hostile", max_retries=0)
def raise_hostile(kind: str, text: str) -> NoReturn:
    raise make_hostile(kind, text)


@queue.task(name="poison.print_and_return", max_retries=0)
def print_and_return(text: str) -> str:
    print(text)
    print(text, file=sys.stderr)
    return text


@queue.task(name="poison.progress", max_retries=0)
def progress(text: str, ctx: stoker.JobContext) -> str:
    ctx.progress(1, 2, text)
    return text


@queue.task(name="poison.return_bytes", max_retries=0)
def return_bytes(size: int) -> bytes:
    return b"r" * size


@queue.task(name="poison.bad_message", max_crashes=0)
def bad_message(ctx: stoker.JobContext) -> None:
    """Send the supervisor a message of the wrong shape, through the worker's own pipe."""
    ctx._report(("done", ctx.job_id))
    threading.Event().wait()


@queue.task(name="poison.block", max_crashes=0)
def block(started: str) -> None:
    """Write this process's pid to ``started``, then wait to be killed."""
    Path(started).write_text(str(os.getpid()))
    threading.Event().wait()


@queue.task(name="poison.kept", result_ttl=1.0, max_retries=0)
def kept(value: Any) -> Any:
    """Its result, or its error history, is kept for a second after it finished."""
    if isinstance(value, Exception):
        raise value
    return value


# --- a signed queue, and what a forger would plant in its database ----------------------


@signed.task(name="poison.signed_echo")
def signed_echo(value: Any) -> Any:
    return value


@signed.task(name="poison.signed_fail", max_retries=0)
def signed_fail(text: str) -> NoReturn:
    raise ValueError(text)


def mark_unpickled(path: str) -> None:
    """What a forged pickle runs when it is loaded: it leaves this file behind."""
    Path(path).write_text("unpickled")


class Tripwire:
    """Pickled, it unpickles by calling :func:`mark_unpickled`."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (mark_unpickled, (self.path,))


# --- hostile exceptions ------------------------------------------------------------------


class StrRaises(Exception):
    def __str__(self) -> str:
        raise RuntimeError("__str__ refuses")


class ReprRaises(Exception):
    def __repr__(self) -> str:
        raise RuntimeError("__repr__ refuses")


class StrAndReprRaise(Exception):
    def __str__(self) -> str:
        raise RuntimeError("__str__ refuses")

    def __repr__(self) -> str:
        raise RuntimeError("__repr__ refuses")


class StrExits(Exception):
    def __str__(self) -> str:
        raise SystemExit(3)


class ReduceRaises(Exception):
    def __reduce__(self) -> Any:
        raise RuntimeError("__reduce__ refuses")


class ReduceExits(Exception):
    def __reduce__(self) -> Any:
        raise SystemExit(4)


class ClassRaises(Exception):
    """Its ``__class__`` raises, so ``isinstance`` against another class raises too."""

    @property  # type: ignore[misc]
    def __class__(self) -> type:  # type: ignore[override]
        raise RuntimeError("__class__ refuses")


class StrIsASubclass(Exception):
    def __str__(self) -> str:
        return _OddStr("odd text")


class _OddStr(str):
    def encode(self, *args: Any, **kwargs: Any) -> bytes:  # type: ignore[override]
        raise RuntimeError("encode refuses")

    def __len__(self) -> int:
        raise RuntimeError("len refuses")


class _ModuleName:
    def __str__(self) -> str:
        raise RuntimeError("the module's name refuses")


def _class_named(text: str) -> type[Exception]:
    """An exception class whose ``__qualname__`` is ``text`` (surrogates and all)."""
    cls = type("Renamed", (Exception,), {})
    cls.__qualname__ = text
    return cls


def _class_of_module(module: object) -> type[Exception]:
    cls = type("Unmoduled", (Exception,), {})
    cls.__module__ = module  # type: ignore[assignment]
    return cls


#: Each kind of hostile exception, from the text the test gives it.
KINDS: dict[str, Callable[[str], BaseException]] = {
    "text": ValueError,
    "text_in_args": lambda text: KeyError(text, text.encode("utf-8", "surrogateescape")),
    "str_raises": StrRaises,
    "repr_raises": ReprRaises,
    "str_and_repr_raise": StrAndReprRaise,
    "str_exits": StrExits,
    "unpicklable_args": lambda text: ValueError(text, threading.Lock()),
    "reduce_raises": ReduceRaises,
    "reduce_exits": ReduceExits,
    "class_raises": ClassRaises,
    "str_is_a_subclass": StrIsASubclass,
    "qualname": lambda text: _class_named(text or "\udce9")(text),
    "module_not_text": _class_of_module(_ModuleName()),
    "module_is_text": lambda text: _class_of_module(text)(text),
    "huge": lambda text: ValueError((text or "x") * (2_000_000 // max(1, len(text)))),
    "hostile_cause": lambda text: _with_cause(ValueError(text), StrAndReprRaise(text)),
    "system_exit": SystemExit,
    "keyboard_interrupt": KeyboardInterrupt,
}


def _with_cause(error: BaseException, cause: BaseException) -> BaseException:
    error.__cause__ = cause
    return error


def make_hostile(kind: str, text: str) -> BaseException:
    made: BaseException = KINDS[kind](text)
    return made
