"""The messages between the supervisor and a worker (``stoker.pool.protocol``)."""

from __future__ import annotations

import pickle

import pytest

from stoker._base.remote_errors import CapturedError
from stoker.pool import protocol
from stoker.pool.protocol import (
    DROP_FRAME,
    Cancelled,
    Done,
    Dropped,
    Failed,
    Progress,
    Ready,
    Requeue,
    Run,
    StartupError,
    Stop,
)

ERROR = CapturedError(
    exc_type="builtins.ValueError", message="bad", traceback="ValueError: bad\n", exc_pickle=None
)

MESSAGES = [
    Run(1, 2, 3, "tasks.add", b"payload", '{"a": 1}', 4),
    Stop(),
    Ready(1234),
    StartupError(ERROR),
    Progress(1, 2, "[1, 2, null]"),
    Done(1, 2, b"result", '{"wall_s": 0.1}'),
    Done(1, 2, None, None),
    Failed(1, 2, ERROR, True, None),
    Cancelled(1, 2, None),
    Requeue(1, 2),
    Dropped(1, 2),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda message: type(message).__name__)
def test_each_message_crosses_a_pipe_as_its_own_type_with_its_fields(message: tuple[object, ...]) -> None:
    for proto in (pickle.DEFAULT_PROTOCOL, pickle.HIGHEST_PROTOCOL):
        received = pickle.loads(pickle.dumps(message, proto))
        assert type(received) is type(message)
        assert received == message
        assert received._asdict() == message._asdict()  # type: ignore[attr-defined]


def test_a_message_pickles_as_small_as_its_fields_and_class_need() -> None:
    # Its class is named once (its module and name, and about a dozen bytes of
    # opcodes), and nothing else is added (no state dict, no NEWOBJ
    # arguments): the no-op path sends two of these per job.
    done = Done(123456, 7, b"\x80\x05N.", '{"wall_s": 1e-05}')
    plain = pickle.dumps(tuple(done), pickle.HIGHEST_PROTOCOL)
    named = pickle.dumps(done, pickle.HIGHEST_PROTOCOL)
    overhead = len(named) - len(plain)
    assert overhead <= len("stoker.pool.protocol") + len("Done") + 16, overhead


def test_every_outcome_of_a_run_is_an_outcome_type() -> None:
    for kind in (Done, Failed, Cancelled, Requeue):
        assert issubclass(kind, tuple)
        assert kind in protocol.Outcome.__args__  # type: ignore[attr-defined]
    assert Dropped not in protocol.Outcome.__args__  # type: ignore[attr-defined]


def test_a_take_back_frame_is_three_64_bit_integers_written_at_once() -> None:
    frame = DROP_FRAME.pack(5, 2**62, 1)
    assert len(frame) == 24 <= 512  # PIPE_BUF: a pipe writes it whole or not at all.
    assert DROP_FRAME.unpack(frame) == (5, 2**62, 1)
