"""Tasks of the reliability tests (``tests/reliability``).

Tasks that count executions append ``job_id attempt pid`` to a ledger file
(O_APPEND) as their last action before returning, so a test knows what really
ran, independently of the database.
"""

from __future__ import annotations

import ctypes
import os
import platform
import random
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import stoker

from .tasks import append

queue = stoker.Queue(os.environ["STOKER_TEST_DB"])


def current_job() -> tuple[int, int]:
    """``(job_id, attempt)`` of the job this task runs for."""
    ctx = stoker.current_job()
    return ctx.job_id, ctx.attempt


def log_execution(ledger: str) -> tuple[int, int]:
    """Append ``job_id attempt pid`` to the ledger; return (job_id, attempt)."""
    current = current_job()
    assert current is not None, "current_job() is set while a job runs"
    job_id, attempt = current
    append(ledger, f"{job_id} {attempt} {os.getpid()}")
    return job_id, attempt


# --- work that is counted -------------------------------------------------------------


@queue.task(name="rel.work", max_retries=0, max_crashes=4, retry_backoff=0.0, retry_backoff_max=0.0)
def work(ledger: str, spin: float = 0.0, payload: bytes | None = None) -> int:
    """Busy for up to ``spin`` seconds (a random part of it), then log and return the job id."""
    if spin:
        end = time.monotonic() + random.random() * spin
        while time.monotonic() < end:
            pass
    job_id, _ = log_execution(ledger)
    return job_id if payload is None else job_id + len(payload)


@queue.task(name="rel.fenced", max_retries=0, max_crashes=3, retry_backoff=0.0, retry_backoff_max=0.0)
def fenced(ledger: str, markers: str, release: str) -> tuple[int, int]:
    """Say which attempt started, wait for ``release``, then log and return (attempt, pid)."""
    current = current_job()
    assert current is not None
    Path(markers, f"attempt-{current[1]}").write_text(str(os.getpid()))
    while not Path(release).exists():
        time.sleep(0.005)
    _, attempt = log_execution(ledger)
    return attempt, os.getpid()


@queue.task(name="rel.hold", max_retries=0, max_crashes=0)
def hold(ledger: str, marker: str, release: str) -> str:
    """Say it started, wait for ``release``, then log (a job the test keeps running)."""
    Path(marker).write_text(str(os.getpid()))
    while not Path(release).exists():
        time.sleep(0.005)
    log_execution(ledger)
    return "released"


# --- tasks that take their worker down ------------------------------------------------

CRASH_BOUND = 2
CRASHING = {"max_retries": 5, "max_crashes": CRASH_BOUND, "retry_backoff": 0.0, "retry_backoff_max": 0.0}


@queue.task(name="rel.kill_self", **CRASHING)
def kill_self(ledger: str) -> None:
    log_execution(ledger)
    os.kill(os.getpid(), signal.SIGKILL)


@queue.task(name="rel.segfault", **CRASHING)
def segfault(ledger: str) -> None:
    log_execution(ledger)
    ctypes.string_at(0)


@queue.task(name="rel.hard_exit", **CRASHING)
def hard_exit(ledger: str) -> None:
    log_execution(ledger)
    os._exit(17)


@queue.task(name="rel.memory_hog", max_retries=2, max_crashes=0, retry_backoff=0.0, retry_backoff_max=0.0)
def memory_hog(ledger: str, cap_bytes: int) -> int:
    """Allocate far past an address-space cap set for this task alone (restored afterwards)."""
    log_execution(ledger)
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (cap_bytes, hard))
    try:
        block = bytearray(4 * cap_bytes)
        return len(block)
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


# --- pickling and unpickling that fails, exits or crashes -----------------------------


def _raise(message: str) -> None:
    raise ValueError(message)


def _exit() -> None:
    sys.exit(5)


def _crash() -> None:
    ctypes.string_at(0)


class Trap:
    """An object that raises, calls sys.exit or segfaults when it is pickled or unpickled.

    ``when`` is "pickle" or "unpickle"; ``how`` is "raise", "exit" or "crash".
    """

    def __init__(self, when: str, how: str) -> None:
        self.when = when
        self.how = how

    def __reduce__(self) -> tuple[Any, ...]:
        if self.when == "pickle":
            if self.how == "raise":
                _raise("this object refuses to be pickled")
            {"exit": _exit, "crash": _crash}[self.how]()
        if self.how == "raise":
            return (_raise, ("this object refuses to be unpickled",))
        return ({"exit": _exit, "crash": _crash}[self.how], ())


class SetstateTrap:
    """Raises from ``__setstate__`` while it is unpickled (after ``__reduce_ex__`` went fine)."""

    def __init__(self) -> None:
        self.value = 1

    def __setstate__(self, state: dict[str, Any]) -> None:
        raise RuntimeError("__setstate__ refuses")


@queue.task(name="rel.echo", max_retries=0, max_crashes=0)
def echo(value: Any) -> str:
    """Receives an argument (which may fail to unpickle here) and returns its type name."""
    return type(value).__qualname__


@queue.task(name="rel.make", max_retries=0, max_crashes=0)
def make(when: str, how: str) -> Any:
    """Returns a result that fails, exits or crashes when pickled here or unpickled by the caller."""
    if how == "setstate":
        return SetstateTrap()
    return Trap(when, how)


@queue.task(name="rel.misbehave", max_retries=0, max_crashes=0)
def misbehave(how: str) -> None:
    """Fails in the task itself: raise, sys.exit, os._exit, a segfault, or a KeyboardInterrupt."""
    if how == "raise":
        raise LookupError("raised in the task")
    if how == "exit":
        sys.exit(3)
    if how == "os_exit":
        os._exit(3)
    if how == "crash":
        _crash()
    if how == "interrupt":
        raise KeyboardInterrupt
    raise AssertionError(how)


@queue.task(name="rel.add")
def add(a: int, b: int) -> int:
    return a + b


# --- hard timeouts ------------------------------------------------------------------------

BIG_RESULT = 100 * 1024 * 1024


#: The number of the write system call, by machine.
WRITE_SYSCALL = {"x86_64": 1, "aarch64": 64}


@queue.task(name="rel.stall_mid_result", timeout=2.0, max_retries=0, max_crashes=0)
def stall_mid_result(marker: str) -> bytes:
    """Return 100 MB, and stop this process (SIGSTOP) while it writes the result to its pipe.

    A thread watches the main thread's current system call and stops the whole
    process once it is a write: from then on the supervisor holds part of a
    message that will not be finished.
    """
    Path(marker).write_text(str(os.getpid()))
    main = threading.get_native_id()
    write = WRITE_SYSCALL[platform.machine()]

    def stop_mid_send() -> None:
        path = f"/proc/self/task/{main}/syscall"
        while True:
            with open(path) as status:
                if status.read().split(" ", 1)[0] == str(write):
                    break
            time.sleep(0.0002)
        os.kill(os.getpid(), signal.SIGSTOP)

    threading.Thread(target=stop_mid_send, daemon=True).start()
    return b"x" * BIG_RESULT


@queue.task(name="rel.big_result", max_retries=0)
def big_result() -> bytes:
    return b"y" * BIG_RESULT


# --- process families (no timeout: only a supervisor's death ends them) --------------------


@queue.task(name="rel.family", max_retries=0, max_crashes=0)
def family(marker: str) -> None:
    """Start a child that starts a grandchild, write ``pid child`` to the marker, and wait."""
    child = subprocess.Popen(
        [sys.executable, "-c", "import subprocess,time; subprocess.Popen(['sleep','600']); time.sleep(600)"]
    )
    Path(marker).write_text(f"{os.getpid()} {child.pid}")
    time.sleep(600)


@queue.task(name="rel.spin_in_c", max_retries=0, max_crashes=0)
def spin_in_c(marker: str) -> None:
    """Spin in C code holding the GIL (catastrophic regex backtracking) for a very long time."""
    Path(marker).write_text(str(os.getpid()))
    re.match(r"(a+)+$", "a" * 80 + "b")


@queue.task(name="rel.cancellable", max_retries=3, max_crashes=3, retry_backoff=0.0, retry_backoff_max=0.0)
def cancellable(ledger: str, markers: str) -> str:
    """Say which attempt started, then wait (only a kill ends it)."""
    current = current_job()
    assert current is not None
    Path(markers, f"attempt-{current[1]}").write_text(str(os.getpid()))
    time.sleep(600)
    log_execution(ledger)
    return "finished"


# --- exceptions built from a description (the error-detail tests) -----------------------------

BASES: dict[str, type[BaseException]] = {
    "Exception": Exception,
    "ValueError": ValueError,
    "KeyError": KeyError,
    "OSError": OSError,
    "RuntimeError": RuntimeError,
}


#: A message of this text stands for a 10 MB message (so that descriptions stay small).
BIG_MESSAGE = "<10 MB>"


def message_of(spec: dict[str, Any]) -> str:
    message: str = spec["message"]
    return "m" * (10 * 1024 * 1024) if message == BIG_MESSAGE else message


def build_exception(spec: dict[str, Any]) -> BaseException:
    """A fresh exception class and instance as ``spec`` describes them.

    ``spec``: ``name``, ``base`` (a key of BASES), ``ctor`` (message, fields,
    kwonly or none), ``attr`` (none, int or lock: a lock cannot be pickled),
    ``message`` (BIG_MESSAGE for 10 MB), and optionally ``group`` (a list of
    specs: an ExceptionGroup of them).
    The class is made at run time, so it crosses by value (cloudpickle) or not at all.
    """
    if spec.get("group") is not None:
        members = [_caught(member) for member in spec["group"]]
        group: BaseException = ExceptionGroup(message_of(spec), members)  # type: ignore[name-defined]  # noqa: F821
        return group
    base = BASES[spec["base"]]
    ctor, message = spec["ctor"], message_of(spec)
    namespace: dict[str, Any] = {}
    if ctor == "fields":

        def __init__(self: Any, user: str, limit: int) -> None:
            base.__init__(self, f"{user} over {limit}")
            self.user, self.limit = user, limit

        namespace["__init__"] = __init__
    elif ctor == "kwonly":

        def __init__(self: Any, user: str, *, limit: int) -> None:  # type: ignore[misc]
            base.__init__(self, f"{user} over {limit}")
            self.user, self.limit = user, limit

        namespace["__init__"] = __init__
    elif ctor == "none":

        def __init__(self: Any) -> None:  # type: ignore[misc]
            base.__init__(self, message)

        namespace["__init__"] = __init__
    cls = type(spec["name"], (base,), namespace)
    cls.__module__ = __name__
    if ctor in ("fields", "kwonly"):
        instance = cls(message, limit=3)
    else:
        instance = cls() if ctor == "none" else cls(message)
    if spec["attr"] == "int":
        instance.code = 7
    elif spec["attr"] == "lock":
        instance.lock = threading.Lock()
    return instance


def raise_described(spec: dict[str, Any]) -> None:
    """Raise the exception of ``spec``, chained to its ``cause`` (explicit) or ``context`` (implicit)."""
    exc = build_exception(spec)
    if spec.get("cause") is not None:
        try:
            raise_described(spec["cause"])
        except BaseException as cause:
            raise exc from cause
    if spec.get("context") is not None:
        try:
            raise_described(spec["context"])
        except BaseException:
            raise exc  # noqa: B904 - the implicit context is the point
    raise exc


def _caught(spec: dict[str, Any]) -> BaseException:
    """The exception of ``spec`` as raised (with its chain and traceback)."""
    try:
        raise_described(spec)
    except BaseException as exc:
        return exc
    raise AssertionError("raise_described returned")


@queue.task(name="rel.raise_described", max_retries=0, max_crashes=0)
def raise_described_task(spec: dict[str, Any]) -> None:
    raise_described(spec)


# --- processes that try to outlive their job (escaped descendants) --------------------------

#: How a task starts a process meant to outlive its job: a plain child, a child
#: in a session of its own (``setsid``: no process-group kill reaches it), and a
#: double-forked daemon (its parent exits: it is nobody's child, and it holds
#: every descriptor the worker had, the fork server's and resource tracker's pipes too).
DESCENDANT_KINDS = ("child", "setsid", "daemon")


def start_descendant(kind: str) -> int:
    """Start a process of ``kind`` that sleeps for ten minutes; its pid."""
    if kind == "child":
        return subprocess.Popen(["sleep", "600"]).pid
    if kind == "setsid":
        return subprocess.Popen(["sleep", "600"], start_new_session=True).pid
    if kind != "daemon":
        raise AssertionError(kind)
    read_end, write_end = os.pipe()
    middle = os.fork()
    if middle == 0:
        try:
            os.close(read_end)
            os.setsid()
            if os.fork() == 0:
                os.write(write_end, str(os.getpid()).encode())
                os.close(write_end)
                time.sleep(600)
        finally:
            os._exit(0)
    os.close(write_end)
    os.waitpid(middle, 0)
    pid = b""
    while chunk := os.read(read_end, 64):
        pid += chunk
    os.close(read_end)
    return int(pid)


@queue.task(name="rel.leave_behind", max_retries=0, max_crashes=0)
def leave_behind(kind: str, marker: str, release: str | None = None, ledger: str | None = None) -> int:
    """Start a descendant of ``kind``, write ``worker_pid descendant_pid`` to ``marker``.

    Then wait for ``release`` (a file; only a kill ends the job if it never
    comes), or return at once without it, leaving the descendant behind.
    """
    pid = start_descendant(kind)
    Path(marker).write_text(f"{os.getpid()} {pid}")
    if release is not None:
        while not Path(release).exists():
            time.sleep(0.005)
    if ledger is not None:
        log_execution(ledger)
    return pid


@queue.task(name="rel.leave_behind_and_crash", max_retries=0, max_crashes=0)
def leave_behind_and_crash(kind: str, marker: str) -> None:
    """Start a descendant of ``kind``, write ``worker_pid descendant_pid`` to ``marker``, then
    end the worker process at once (a crash: nothing of stoker's runs after it)."""
    pid = start_descendant(kind)
    Path(marker).write_text(f"{os.getpid()} {pid}")
    os._exit(3)


@queue.task(name="rel.keep_behind", max_retries=0, max_crashes=0, keep_children=True)
def keep_behind(kind: str, marker: str) -> int:
    """Like ``rel.leave_behind`` without waiting, for a task that keeps its processes."""
    pid = start_descendant(kind)
    Path(marker).write_text(f"{os.getpid()} {pid}")
    return pid


@queue.task(name="rel.leave_behind_and_hog", max_retries=0, max_crashes=0, memory_limit_mb=200)
def leave_behind_and_hog(kind: str, marker: str) -> None:
    """Start a descendant of ``kind``, then hold far more memory than the task's limit until killed."""
    pid = start_descendant(kind)
    Path(marker).write_text(f"{os.getpid()} {pid}")
    held = b"x" * (400 * 1024 * 1024)
    time.sleep(600)
    del held


@queue.task(name="rel.escape", max_retries=0, max_crashes=10, retry_backoff=0.0, retry_backoff_max=0.0)
def escape(kind: str, fate: str, descendants: str, ledger: str) -> int:
    """Start a descendant of ``kind`` and append ``job attempt worker descendant`` to ``descendants``.

    ``fate`` "end": log the execution and return, leaving the descendant
    behind; anything else: wait until killed (a timeout, a cancel, the
    supervisor's death).
    """
    job_id, attempt = current_job()
    pid = start_descendant(kind)
    append(descendants, f"{job_id} {attempt} {os.getpid()} {pid}")
    if fate == "end":
        log_execution(ledger)
        return pid
    time.sleep(600)
    raise AssertionError("a job meant to be killed was not")
