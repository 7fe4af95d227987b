"""Tasks and extensions for the tests of the user surface (context, events, middlewares, ...)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import stoker
from stoker import JobContext, Middleware, SendMessage, State

queue = stoker.Queue(os.environ["STOKER_TEST_DB"])
signed = stoker.Queue(os.environ["STOKER_TEST_DB"], secret="surface-secret")


def append(path: str | os.PathLike[str], line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def lines(path: str | os.PathLike[str]) -> list[str]:
    p = Path(path)
    return p.read_text().splitlines() if p.exists() else []


# --- middlewares and hooks -------------------------------------------------------------


class Recorder(Middleware):
    """Labels each send, and records the worker-side stages in the job's ledger label."""

    def __init__(self) -> None:
        self.saved: list[tuple[int, str]] = []
        self.sent: list[int] = []

    def pre_send(self, message: SendMessage) -> None:
        message.labels["stamped"] = "yes"
        if message.task_name == "surface.refuse_send":
            raise RuntimeError("not this one")

    def post_send(self, job: stoker.Job) -> None:
        self.sent.append(job.id)

    def pre_execute(self, ctx: JobContext, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if "ledger" in ctx.labels:
            append(ctx.labels["ledger"], f"pre_execute {ctx.task_name}")
        if ctx.task_name == "surface.broken_middleware":
            raise ValueError("middleware is broken")

    def post_execute(self, ctx: JobContext, result: Any) -> None:
        if "ledger" in ctx.labels:
            append(ctx.labels["ledger"], f"post_execute {result!r}")

    def on_error(self, ctx: JobContext, error: BaseException) -> None:
        if "ledger" in ctx.labels:
            append(ctx.labels["ledger"], f"on_error {type(error).__name__}")

    def post_save(self, job_id: int, status: str) -> None:
        self.saved.append((job_id, status))


recorder = Recorder()
queue.add_middleware(recorder)


@queue.on_success
def _success(task_name: str, args: tuple[Any, ...], kwargs: dict[str, Any], result: Any) -> None:
    ledger = kwargs.get("ledger")
    if ledger:
        append(ledger, f"on_success {task_name} {result!r}")


@queue.on_failure
def _failure(task_name: str, args: tuple[Any, ...], kwargs: dict[str, Any], error: BaseException) -> None:
    ledger = kwargs.get("ledger")
    if ledger:
        append(ledger, f"on_failure {task_name} {type(error).__name__}")


@queue.on_plugin_trigger
def _substitute(error: stoker.PluginTriggerError, *, task_name: str, args: Any, kwargs: Any) -> Any:
    if error.details.get("answer") is not None:
        return error.details["answer"]
    return None


# --- events and state -------------------------------------------------------------------


@queue.on_event("worker_startup")
def _open_resources(state: State) -> None:
    state.set("connection", f"connection of {os.getpid()}")


async def _async_startup(state: State) -> None:
    state.set("async_ready", True)


queue.add_event_handlers({"worker_startup": [_async_startup]})


@queue.on_event("worker_shutdown")
def _close_resources(state: State) -> None:
    note = state.get("shutdown_note")
    if note:
        append(note, f"shutdown {os.getpid()}")


client_events: list[str] = []
queue.add_event_handler("client_startup", lambda state: client_events.append("startup"))
queue.add_event_handler("client_shutdown", lambda state: client_events.append("shutdown"))


# --- tasks ---------------------------------------------------------------------------------


@queue.task(name="surface.about_me")
def about_me() -> dict[str, Any]:
    ctx = stoker.current_job()
    return {"job_id": ctx.job_id, "attempt": ctx.attempt, "labels": ctx.labels, "task": ctx.task_name}


@queue.task(name="surface.injected")
def injected(x: int, ctx: JobContext) -> tuple[int, int]:
    return x, ctx.job_id


@queue.task(name="surface.with_progress", max_retries=0)
def with_progress(release: str) -> str:
    ctx = stoker.current_job()
    ctx.progress(1, 3, "first step")
    while not Path(release).exists():
        time.sleep(0.01)
    ctx.progress(3, 3, "done")
    return "finished"


@queue.task(name="surface.soft_limited", soft_timeout=0.05, max_retries=0)
def soft_limited() -> None:
    ctx = stoker.current_job()
    while True:
        ctx.check_timeout()
        time.sleep(0.005)


@queue.task(name="surface.cooperative", cancel_grace=60, max_retries=2)
def cooperative(marker: str) -> str:
    ctx = stoker.current_job()
    Path(marker).write_text(str(os.getpid()))
    while True:
        ctx.check_cancelled()
        time.sleep(0.005)


@queue.task(name="surface.rejecting", max_retries=3)
def rejecting(ledger: str) -> None:
    append(ledger, "run")
    stoker.current_job().reject("bad input")


@queue.task(name="surface.requeue_once", max_retries=0)
def requeue_once(ledger: str) -> int:
    append(ledger, "run")
    if len(lines(ledger)) == 1:
        stoker.current_job().requeue()
    return len(lines(ledger))


@queue.task(name="surface.requeue_forever", max_retries=0)
def requeue_forever(ledger: str) -> None:
    append(ledger, "run")
    stoker.current_job().requeue()


@queue.task(name="surface.plugin", max_retries=0)
def plugin(answer: int | None) -> str:
    stoker.current_job().plugin_error("no regular answer", answer=answer)


@queue.task(name="surface.state")
def read_state(shutdown_note: str | None = None) -> tuple[Any, Any, int]:
    state = stoker.worker_state()
    if shutdown_note:
        state.set("shutdown_note", shutdown_note)
    return state.get("connection"), state.get("async_ready"), os.getpid()


@queue.task(name="surface.hooked", max_retries=0)
def hooked(value: int, *, ledger: str) -> int:
    if value < 0:
        raise ValueError("negative")
    return value * 2


@queue.task(name="surface.broken_middleware", max_retries=1, retry_backoff=0.01, retry_backoff_max=0.01)
def broken_middleware() -> str:
    return "never"


@queue.task(name="surface.refuse_send")
def refuse_send() -> None:
    """Its sends are refused by the Recorder's pre_send."""


@queue.task(name="surface.no_result", store_result=False)
def no_result(x: int) -> int:
    return x


@queue.task(name="surface.burn")
def burn(n: int) -> int:
    """Spend some CPU and memory, so that the resource accounting has something to count."""
    block = bytearray(b"x" * (20 * 1024 * 1024))
    total = 0
    for i in range(n):
        total += i * i
    return total + len(block)


@queue.task(name="surface.hog", memory_limit_mb=150, max_retries=0)
def hog(marker: str) -> None:
    """Hold ~400 MiB, far over its 150 MiB limit, and wait to be killed."""
    block = b"x" * (400 * 1024 * 1024)
    Path(marker).write_text(str(len(block)))
    time.sleep(600)


@queue.task(name="surface.pid")
def pid() -> int:
    return os.getpid()


@queue.task(name="surface.flaky", max_retries=3, retry_backoff=30, retry_backoff_max=30)
def flaky(ledger: str) -> int:
    """Fails twice; in test mode the 30 s backoff is skipped by the manual clock."""
    append(ledger, "run")
    if len(lines(ledger)) < 3:
        raise ConnectionError("try again")
    return len(lines(ledger))


# --- signed payloads ------------------------------------------------------------------------


def mark_unpickled(path: str) -> str:
    Path(path).write_text("unpickled")
    return path


class Tripwire:
    """Unpickling it creates a file: evidence that a payload was unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (mark_unpickled, (self.path,))


@signed.task(name="surface.signed_add")
def signed_add(a: int, b: int) -> int:
    return a + b
