"""This process's side of a database: the supervisors it runs, how a send wakes
them, and whether this process is a worker (which never opens the database).
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import weakref
from typing import TYPE_CHECKING, Protocol

from .._base.wakeup import CHANGED, NEW_WORK, WakeSender
from ..errors import InvalidOptionError

if TYPE_CHECKING:
    from .job import Outcome

#: Worker processes are named with this prefix. A queue created while a worker
#: imports the user's module sees it and never opens the database: only the
#: supervisor writes storage.
WORKER_PROCESS_PREFIX = "stoker-worker"

#: The exit code of a worker process that met, while multiprocessing imported
#: the main module again in it, code that sends jobs, waits for results or
#: starts a pool (a main module without ``if __name__ == "__main__":``). The
#: supervisor takes it for that and fails at once with a
#: :class:`~stoker.errors.MainModuleNotGuardedError`, instead of starting
#: worker after worker. Any code other than 0, 1 and the signals' would do;
#: this one says nothing else in stoker.
MAIN_REIMPORT_EXIT_CODE = 86


class LocalSupervisor(Protocol):
    """What a send needs of a supervisor running in this process: a way to wake it."""

    def notify(self, *, new_work: bool = False) -> None: ...


#: Supervisors running in this process, by the real path of their database. A
#: send wakes them at once through their pipe; supervisors in other processes
#: are woken through their FIFOs (``_base/wakeup.py``).
LOCAL_SUPERVISORS: dict[str, weakref.WeakSet[LocalSupervisor]] = {}


def is_database_url(path: str) -> bool:
    """Whether ``path`` names a PostgreSQL database rather than a SQLite file."""
    return path.startswith(("postgresql://", "postgres://"))


def local_key(path: str) -> str:
    """The key under which the supervisors of one database meet in a process:
    the resolved file path, or the URL as given."""
    return path if is_database_url(path) else os.path.realpath(path)


def database_path(path: object) -> str:
    """The path of a SQLite file, or a PostgreSQL URL, as the text the engine opens.

    A str, bytes or an ``os.PathLike`` of either; bytes are decoded as the
    file system does (``os.fsdecode``). SQLite and PostgreSQL take UTF-8
    names, so a path that is not valid UTF-8 is refused here, naming it.
    """
    try:
        text = os.fsdecode(path)  # type: ignore[arg-type]
    except TypeError:
        raise InvalidOptionError(
            "a Queue's path must be a str, bytes or os.PathLike (a file path or a "
            f"postgresql:// URL), got {path!r}"
        ) from None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidOptionError(
            f"a Queue's path must be valid UTF-8 (SQLite and PostgreSQL take UTF-8 names), got {path!r}"
        ) from None
    return text


def notify_local_supervisors(path: str, *, new_work: bool = False) -> None:
    """Wake the supervisors of this process that serve the database at ``path``."""
    for supervisor in LOCAL_SUPERVISORS.get(path, ()):
        supervisor.notify(new_work=new_work)


class Database:
    """A queue's database as this process sees it (``Queue.database``).

    ``key`` is where its supervisors meet in this process (:func:`local_key`);
    ``registry_key`` is where its tasks are registered (``registry.py``):
    the same, but for ``":memory:"``, where every queue has a database of
    its own.
    """

    __slots__ = ("_wake_sender", "key", "path", "registry_key", "test_outcomes")

    def __init__(self, path: str, owner_id: int) -> None:
        self.path = path
        self.key = local_key(path)
        self.registry_key = f":memory:#{owner_id}" if path == ":memory:" else self.key
        #: While test mode is on (``Queue.test_mode``): the outcomes of the
        #: jobs sent, each run at once (``send.send_calls``) in a private
        #: in-memory database. None otherwise.
        self.test_outcomes: list[Outcome] | None = None
        self._wake_sender: WakeSender | None = None

    def same_as(self, other: Database) -> bool:
        """Whether ``other`` is this database (a job id means the same job in both)."""
        if other is self:
            return True
        # Every ":memory:" queue has a database of its own.
        return self.path != ":memory:" and other.path != ":memory:" and other.key == self.key

    def served_here(self) -> bool:
        """Whether a supervisor of this process serves this database (it wakes waiters)."""
        return bool(LOCAL_SUPERVISORS.get(self.key))

    def wake(self, *, new_work: bool = True) -> None:
        """Tell the supervisors of this database that there is something to act on.

        ``new_work``: jobs were sent (they claim); otherwise something else
        changed (a cancel request, a schedule: they look at the database).
        Supervisors of this process are woken through their pipe, the others
        through their FIFOs; both cost a write or two, so every send does it.
        """
        local = LOCAL_SUPERVISORS.get(self.key)
        if local:
            notify_local_supervisors(self.key, new_work=new_work)
        if self.test_outcomes is not None or self.path == ":memory:":
            return
        if is_database_url(self.path):
            # PostgreSQL: the transaction's NOTIFY wakes the supervisors of every host.
            return
        if self._wake_sender is None:
            self._wake_sender = WakeSender(self.path)
        self._wake_sender.notify(NEW_WORK if new_work else CHANGED, skip_own_process=bool(local))


def in_worker_process() -> bool:
    """Whether this process is a stoker worker (its name is set before any import)."""
    return multiprocessing.current_process().name.startswith(WORKER_PROCESS_PREFIX)


def importing_main_again() -> bool:
    """Whether this is a stoker worker process still importing the main module.

    Under spawn and forkserver, multiprocessing runs the main module again (as
    ``__mp_main__``) in each new process before its target, and marks the
    process as inheriting meanwhile (its own check against starting processes
    there reads the same mark).
    """
    return in_worker_process() and bool(getattr(multiprocessing.current_process(), "_inheriting", False))


def refuse_main_reimport(action: str) -> None:
    """End a worker process whose main module, imported again, tries to ``action``.

    Nothing it could do would help: a send or a pool started there would
    repeat, in every worker, what the caller did, and an error raised there
    only ends the process with the code of any failed start. So it says what
    is wrong on stderr and exits with :data:`MAIN_REIMPORT_EXIT_CODE`, which
    its supervisor reports to the caller at once.
    """
    if not importing_main_again():
        return
    where = "the main module"
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_globals.get("__name__") == "__mp_main__":
            where = f"{frame.f_code.co_filename}:{frame.f_lineno}"
            break
        frame = frame.f_back  # type: ignore[assignment]
    sys.stderr.write(
        f"stoker: {where} tries to {action} while worker process {multiprocessing.current_process().name} "
        "imports the main module again (the spawn and forkserver start methods import it in every "
        'worker process); put that code under `if __name__ == "__main__":`\n'
    )
    sys.stderr.flush()
    os._exit(MAIN_REIMPORT_EXIT_CODE)
