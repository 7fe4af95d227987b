"""Wake-ups between processes that share an SQLite database.

A supervisor idles in ``poll()``. Work sent from its own process wakes it
through a pipe; work sent from another process (another program, the CLI)
would otherwise be noticed only at its next look at SQLite's change counter.
Each supervisor therefore listens on a FIFO in a directory beside the database
(``jobs.db-wake/``), and every process that changes something a supervisor
must act on (a send, a cancel request, a replay, a schedule) writes one byte to
each FIFO there. The change counter stays the backstop: a lost wake-up delays
work by one poll interval, never strands it.

::

    sender process                          supervisor process
    enqueue (commit) ──► write 1 byte ──►  FIFO ──► poll() wakes ──► claim

A FIFO is opened by its listener for reading *and* writing, so it always has a
writer and never reports end-of-file; a sender opens it without blocking, and
a FIFO that nobody reads (its supervisor was killed) fails that open with
ENXIO and is removed by the sender.
"""

from __future__ import annotations

import errno
import os
import secrets
import threading
import time

#: The directory of FIFOs, beside the database file (like ``-wal`` and ``-shm``).
WAKE_DIR_SUFFIX = "-wake"
#: The byte a wake-up carries: jobs were sent (the supervisor claims), or
#: something else changed (it looks for cancel requests and schedules).
NEW_WORK = b"w"
CHANGED = b"c"
#: A sender looks at the directory (one ``stat``) at most this often to see
#: supervisors come and go. A supervisor that just started may miss wake-ups
#: for this long; its change poll (every 50 ms) covers them.
RELIST_INTERVAL = 0.05


def wake_dir(database_path: str) -> str:
    """The directory of the FIFOs of the supervisors of the database at ``database_path``."""
    return os.path.realpath(database_path) + WAKE_DIR_SUFFIX


class WakeListener:
    """One supervisor's FIFO; ``fd`` becomes readable when another process wakes it."""

    def __init__(self, database_path: str) -> None:
        directory = wake_dir(database_path)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        name = f"{os.getpid()}-{secrets.token_hex(4)}"
        self.path = os.path.join(directory, name)
        # Made under a hidden name and renamed once open: a sender that saw it
        # before it had a reader would take it for a dead one and remove it.
        making = os.path.join(directory, f".{name}")
        os.mkfifo(making, 0o600)
        self.fd = os.open(making, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        os.rename(making, self.path)

    def drain(self) -> bytes:
        """Read and return every pending wake-up byte."""
        received = b""
        try:
            while chunk := os.read(self.fd, 4096):
                received += chunk
        except BlockingIOError:
            pass
        return received

    def close(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class WakeSender:
    """Wakes every supervisor listening on one database, from any process.

    The FIFOs are listed again only when the directory changed (a supervisor
    came or went), and each one stays open for writing between wake-ups, so a
    wake-up costs one ``stat`` and one ``write`` per listening supervisor.
    """

    def __init__(self, database_path: str) -> None:
        self.directory = wake_dir(database_path)
        self._lock = threading.Lock()
        self._listed_version: int | None = None
        self._next_look = 0.0
        self._fds: dict[str, int] = {}

    def notify(self, what: bytes = CHANGED, *, skip_own_process: bool = False) -> None:
        """Wake the listening supervisors with ``what`` (NEW_WORK or CHANGED).

        Those of this process too, unless ``skip_own_process``.
        """
        with self._lock:
            now = time.monotonic()
            if now >= self._next_look:
                self._next_look = now + RELIST_INTERVAL
                try:
                    version = os.stat(self.directory).st_mtime_ns
                except OSError:
                    self._close_all()
                    return  # No supervisor has ever listened on this database.
                if version != self._listed_version:
                    self._relist()
                    self._listed_version = version
            own = f"{os.getpid()}-"
            for name, fd in list(self._fds.items()):
                if skip_own_process and name.startswith(own):
                    continue
                try:
                    os.write(fd, what)
                except BlockingIOError:
                    pass  # Its buffer is full of earlier wake-ups: it is awake already.
                except OSError:
                    # Its reader is gone since the FIFO was opened.
                    self._forget(name, remove=True)

    def close(self) -> None:
        with self._lock:
            self._close_all()

    def _relist(self) -> None:
        try:
            names = {name for name in os.listdir(self.directory) if not name.startswith(".")}
        except OSError:
            names = set()
        for name in set(self._fds) - names:
            self._forget(name, remove=False)
        for name in names - set(self._fds):
            path = os.path.join(self.directory, name)
            try:
                self._fds[name] = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError as error:
                if error.errno == errno.ENXIO:
                    # Nobody reads it: its supervisor died without removing it.
                    _unlink_quietly(path)

    def _forget(self, name: str, *, remove: bool) -> None:
        fd = self._fds.pop(name, None)
        if fd is not None:
            os.close(fd)
        if remove:
            _unlink_quietly(os.path.join(self.directory, name))

    def _close_all(self) -> None:
        for name in list(self._fds):
            self._forget(name, remove=False)
        self._listed_version = None


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
