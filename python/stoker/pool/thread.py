"""A supervisor running on a background thread of the caller's process."""

from __future__ import annotations

import atexit
import threading
from typing import TYPE_CHECKING

from ..client.waiting import pool_failed
from ..errors import WorkerStartupError
from . import tunables

if TYPE_CHECKING:
    from .supervisor import Supervisor


class SupervisorThread:
    """A supervisor running on a background thread (for tests and embedding)."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="stoker-supervisor", daemon=True)
        self._thread.start()
        # Registered after multiprocessing's own exit hook, so it runs first:
        # that hook joins every child process, and would wait forever for the
        # workers of a pool that nobody stopped.
        atexit.register(self._stop_at_exit)

    def _stop_at_exit(self) -> None:
        if self._thread.is_alive():
            self.supervisor.stop()
            self.supervisor.stop()  # A second stop kills running jobs and re-queues them.
            self._thread.join(2 * tunables.KILL_REAP_WAIT)

    def _run(self) -> None:
        try:
            self.supervisor.run()
        except BaseException as exc:
            self.error = exc
            if isinstance(exc, WorkerStartupError) and self.supervisor.database_key:
                # The waiters of this process for jobs it would have run learn why at once.
                pool_failed(self.supervisor.database_key, exc)
            self.supervisor.started.set()
            raise

    def wait_started(self, timeout: float | None = None) -> bool:
        """Block until every worker is ready (or the supervisor failed)."""
        return self.supervisor.started.wait(timeout)

    def stop(self, timeout: float | None = None) -> None:
        """Stop gracefully and wait for the thread to end."""
        self.supervisor.stop()
        self._thread.join(timeout)
        if not self._thread.is_alive():
            atexit.unregister(self._stop_at_exit)

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def __enter__(self) -> SupervisorThread:  # noqa: PYI034 - not meant to be subclassed
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
