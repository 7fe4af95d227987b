"""The worker's end of its pipe (worker._Inbox): jobs sent ahead and asked back."""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from multiprocessing.connection import Connection

import pytest

from stoker.worker import _Inbox


@pytest.fixture
def pipe() -> Iterator[tuple[Connection, _Inbox]]:
    supervisor_end, worker_end = multiprocessing.Pipe(duplex=True)
    yield supervisor_end, _Inbox(worker_end)
    supervisor_end.close()
    worker_end.close()


def _run(job_id: int, token: int) -> tuple[object, ...]:
    return ("run", job_id, token, 1, "task", b"payload", None)


def test_a_job_asked_back_before_it_starts_is_given_back(pipe: tuple[Connection, _Inbox]) -> None:
    supervisor, inbox = pipe
    supervisor.send(_run(1, 7))
    supervisor.send(_run(2, 7))
    supervisor.send(("drop", 1, 7))
    inbox.answer_drops()
    assert supervisor.recv() == ("dropped", 1, 7)
    assert not supervisor.poll()
    # The other job is still there, and comes next.
    assert inbox.receive() == _run(2, 7)


def test_a_drop_of_a_job_not_waiting_is_ignored(pipe: tuple[Connection, _Inbox]) -> None:
    supervisor, inbox = pipe
    supervisor.send(_run(1, 7))
    assert inbox.receive() == _run(1, 7)  # Started.
    supervisor.send(("drop", 1, 7))
    supervisor.send(("drop", 1, 8))  # Another claim of the same job.
    inbox.answer_drops()
    assert not supervisor.poll()
    assert list(inbox.backlog) == []


def test_a_signal_during_a_pipe_call_is_answered_after_it(pipe: tuple[Connection, _Inbox]) -> None:
    supervisor, inbox = pipe
    supervisor.send(_run(1, 7))
    supervisor.send(("drop", 1, 7))
    # SIGUSR2 arrives while the loop is in the middle of a send: the handler
    # must not touch the pipe then; the send answers it when it is over.
    inbox._in_pipe_call = True
    inbox.on_signal(0, None)
    assert not supervisor.poll()
    inbox._in_pipe_call = False
    inbox.send(("progress", 0, 0, "{}"))
    assert supervisor.recv() == ("progress", 0, 0, "{}")
    assert supervisor.recv() == ("dropped", 1, 7)
    assert list(inbox.backlog) == []


def test_a_signal_between_pipe_calls_answers_at_once(pipe: tuple[Connection, _Inbox]) -> None:
    supervisor, inbox = pipe
    supervisor.send(_run(3, 1))
    supervisor.send(("drop", 3, 1))
    inbox.on_signal(0, None)
    assert supervisor.recv() == ("dropped", 3, 1)
