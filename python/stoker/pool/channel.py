"""The supervisor's end of a worker's pipe, which never blocks the supervisor's loop.

A worker talks over a plain :class:`multiprocessing.connection.Connection`
(blocking, one pickled message per frame). On the supervisor's side the same
frames are read and written without blocking: ``Connection.recv`` would wait
for the rest of a message that a worker stopped (SIGSTOP, a swapped-out or
frozen process) in the middle of sending, and ``Connection.send`` for a worker
that does not read; either would stall every other worker's deadlines,
heartbeats and results. A :class:`Channel` instead keeps partial frames in
buffers and goes on at the next wake-up.

Frames are those of ``multiprocessing.connection``: a 4-byte big-endian signed
length, or ``-1`` and an 8-byte unsigned length for frames of 2 GiB or more,
then the pickled message. Messages hold only plain values (ids, bytes,
strings, captured errors), so the standard pickler reads and writes them: it
is what ``Connection`` uses at the worker's end too, without the cost of
building a ``ForkingPickler`` for every message.
"""

from __future__ import annotations

import os
import pickle
import struct
from multiprocessing.connection import Connection
from typing import Any

#: Most bytes read from one worker per wake-up, so that a worker sending a huge
#: result does not hold up the loop's deadlines for long.
READ_BUDGET = 64 * 1024 * 1024
#: Bytes asked for by the first read of a wake-up. ``os.read`` allocates what
#: it asks for before reading; up to this size the allocation comes from the
#: heap, where a larger one maps and unmaps memory (three system calls, and
#: page faults) for every message, however small.
READ_FIRST_CHUNK = 64 * 1024
#: Bytes asked for by each further read, once a message proved large.
READ_CHUNK = 4 * 1024 * 1024
_SHORT = struct.Struct("!i")
_LONG = struct.Struct("!Q")


class ProtocolError(Exception):
    """A worker sent bytes that are not a message (its pipe is useless from then on)."""


class Channel:
    """Non-blocking framed messages over a connection's file descriptor.

    ``drops`` is the write end of the worker's second pipe, of take-backs
    (``protocol.DROP_FRAME``): a frame of 24 bytes is written whole or not at
    all (a pipe writes up to ``PIPE_BUF`` bytes at once).
    """

    def __init__(self, conn: Connection, drops: Connection | None = None) -> None:
        self.conn = conn
        self.fd = conn.fileno()
        os.set_blocking(self.fd, False)
        self.drops = drops
        if drops is not None:
            os.set_blocking(drops.fileno(), False)
        self._in = bytearray()
        self._out = bytearray()
        self.eof = False
        """The worker's end is closed: nothing more will come."""

    @property
    def output_pending(self) -> bool:
        """Part of a sent message has not been written yet (the worker is not reading)."""
        return bool(self._out)

    def send(self, message: Any) -> None:
        """Queue one message and write as much of it as the pipe takes now.

        Raises ``BrokenPipeError`` (an ``OSError``) if the worker's end is closed.
        """
        data = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
        size = len(data)
        header = _SHORT.pack(size) if size <= 0x7FFFFFFF else _SHORT.pack(-1) + _LONG.pack(size)
        self._out += header
        self._out += data
        self.flush()

    def flush(self) -> None:
        """Write what is pending, as far as the pipe takes it without blocking."""
        while self._out:
            try:
                written = os.write(self.fd, self._out)
            except BlockingIOError:
                return
            del self._out[:written]

    def receive(self) -> list[Any]:
        """The messages that arrived completely since the last call (maybe none)."""
        budget = READ_BUDGET
        while budget > 0 and not self.eof:
            asked = min(READ_CHUNK if budget < READ_BUDGET else READ_FIRST_CHUNK, budget)
            try:
                chunk = os.read(self.fd, asked)
            except BlockingIOError:
                break
            except (ConnectionResetError, OSError):
                self.eof = True
                break
            if not chunk:
                self.eof = True
                break
            self._in += chunk
            budget -= len(chunk)
            if len(chunk) < asked:
                # The pipe held less than was asked for, so it is empty now: a
                # second read would only fail, and a system call costs more
                # than the rest of a small message's handling. Whatever comes
                # next makes the pipe readable again for the next poll.
                break
        return self._parse()

    def _parse(self) -> list[Any]:
        messages: list[Any] = []
        while True:
            if len(self._in) < _SHORT.size:
                return messages
            (size,) = _SHORT.unpack_from(self._in)
            start = _SHORT.size
            if size == -1:
                if len(self._in) < _SHORT.size + _LONG.size:
                    return messages
                (size,) = _LONG.unpack_from(self._in, _SHORT.size)
                start += _LONG.size
            elif size < 0:
                raise ProtocolError(f"a frame header announced {size} bytes")
            end = start + size
            if len(self._in) < end:
                return messages
            with memoryview(self._in) as view, view[start:end] as body:
                frame = bytes(body)
            del self._in[:end]
            try:
                messages.append(pickle.loads(frame))
            except Exception as error:
                raise ProtocolError(f"a message could not be unpickled: {error!r}") from error

    def send_drop(self, frame: bytes) -> bool:
        """Write one take-back frame; False if it could not be written now (a full pipe).

        Raises ``BrokenPipeError`` (an ``OSError``) if the worker's end is closed.
        """
        if self.drops is None:
            return False
        try:
            return os.write(self.drops.fileno(), frame) == len(frame)
        except BlockingIOError:
            return False

    def close(self) -> None:
        self.conn.close()
        if self.drops is not None:
            self.drops.close()
