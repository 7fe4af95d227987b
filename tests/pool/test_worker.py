"""The worker's ends of its pipes (worker._Inbox): jobs sent ahead and asked back."""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections.abc import Iterator

import pytest

from conftest import HANG_GUARD
from stoker.pool.protocol import DROP_FRAME, Dropped, Progress, Run
from stoker.pool.worker import _Inbox


class Ends:
    """The supervisor's ends of a worker's two pipes, and the worker's inbox."""

    def __init__(self) -> None:
        self.messages, worker_end = multiprocessing.Pipe(duplex=True)
        drops_read, self.drops = multiprocessing.Pipe(duplex=False)
        self.inbox = _Inbox(worker_end, drops_read)
        self._closing = [self.messages, worker_end, drops_read, self.drops]

    def drop(self, seq: int, job_id: int, token: int) -> None:
        os.write(self.drops.fileno(), DROP_FRAME.pack(seq, job_id, token))

    def close(self) -> None:
        for conn in self._closing:
            conn.close()


@pytest.fixture
def ends() -> Iterator[Ends]:
    pipes = Ends()
    yield pipes
    pipes.close()


def _run(job_id: int, token: int, seq: int) -> Run:
    return Run(job_id, token, 1, "task", b"payload", None, seq)


def test_a_job_given_back_before_it_starts_is_answered_and_skipped(ends: Ends) -> None:
    inbox = ends.inbox
    assert inbox.start(1)  # Job 1 runs; jobs 2 and 3 wait in the pipe.
    assert inbox.give_back(2, 12, 7)
    assert ends.messages.recv() == Dropped(12, 7)
    assert not inbox.start(2)  # The main thread comes to it: skipped.
    assert inbox.start(3)  # The next one runs.
    assert not ends.messages.poll()


def test_a_take_back_of_a_job_started_or_finished_is_ignored(ends: Ends) -> None:
    inbox = ends.inbox
    assert inbox.start(1)
    assert inbox.start(2)
    assert not inbox.give_back(2, 12, 7)  # Running.
    assert not inbox.give_back(1, 11, 7)  # Finished.
    assert inbox.give_back(3, 13, 7)
    assert not inbox.give_back(3, 13, 7)  # Asked twice: answered once.
    assert ends.messages.recv() == Dropped(13, 7)
    assert not ends.messages.poll()


def test_the_drop_pipe_is_read_while_the_main_thread_is_busy(ends: Ends) -> None:
    inbox = ends.inbox
    inbox.read_drops_in_background()
    assert inbox.start(1)
    # The main thread is in a task (here: blocked on an event, not on the
    # pipe); the reader thread answers on its own, frame by frame.
    ends.drop(3, 13, 1)
    ends.drop(1, 11, 1)  # Started: no answer.
    ends.drop(2, 12, 1)
    assert ends.messages.poll(HANG_GUARD)
    assert ends.messages.recv() == Dropped(13, 1)
    assert ends.messages.poll(HANG_GUARD)
    assert ends.messages.recv() == Dropped(12, 1)
    assert not inbox.start(2) and not inbox.start(3)


def test_answers_and_the_main_threads_messages_are_never_interleaved(ends: Ends) -> None:
    inbox = ends.inbox
    big = b"x" * (1 << 20)  # Larger than the pipe: written in several parts.
    received: list[tuple[object, ...]] = []
    reader = threading.Thread(target=lambda: received.extend(ends.messages.recv() for _ in range(202)))
    reader.start()
    sender = threading.Thread(target=lambda: [inbox.send(Progress(0, 0, big.decode())) for _ in range(100)])
    sender.start()
    for seq in range(1, 102):
        assert inbox.give_back(seq, seq, 1)
    sender.join(HANG_GUARD)
    inbox.send(Progress(0, 0, big.decode()))
    reader.join(HANG_GUARD)
    assert sorted(type(m).__name__ for m in received) == ["Dropped"] * 101 + ["Progress"] * 101
    assert all(m[3] == big for m in received if m[0] == "progress")
