"""A queue whose worker_startup handler always fails."""

from __future__ import annotations

import os

import stoker

queue = stoker.Queue(os.environ["STOKER_TEST_DB"])


@queue.on_event("worker_startup")
def _connect(state: stoker.State) -> None:
    raise ConnectionError("cannot reach the license server")


@queue.task(name="broken_startup.noop")
def noop() -> None:
    pass
