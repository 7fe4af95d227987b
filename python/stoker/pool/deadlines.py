"""The limits of running jobs, and the kills they end in.

A hard timeout (``timeout``: SIGKILL, or SIGTERM and SIGKILL ``kill_grace``
later), a cancel (at once, or after the task's ``cancel_grace`` once SIGUSR1
told it), a memory limit (``memory_limit_mb``, read every
``MEMORY_POLL_INTERVAL``), and the wait of jobs sent ahead behind a long one
(``JOB_AHEAD_MAX_WAIT``: they are asked back). A killed worker's job is
settled by ``outcomes.Outcomes.killed_or_lost`` once the process is gone.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from . import tunables
from .dispatch import Dispatcher
from .guardian import signal_tree
from .processes import Worker, tree_rss_kib

if TYPE_CHECKING:
    from .supervisor import Supervisor


class Deadlines:
    """Cancels, deadlines and kills of the jobs running on a supervisor's workers."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.sup = supervisor
        self._next_memory_poll = 0.0

    def cancel(self, job_id: int, token: int) -> None:
        """A cancel request for a job of this supervisor: held, in a pipe, or running."""
        dispatch = self.sup.dispatch
        if dispatch.held.remove(job_id, token):
            # Not started yet: it ends cancelled without a worker being killed.
            self.sup.outcomes.cancel_later(job_id, token)
            return
        for w in self.sup.workers.all:
            for queued in w.queued:
                if queued.job.id == job_id and queued.job.token == token:
                    # Waiting in the worker's pipe behind the running job, which goes on.
                    if queued.dropping is None:
                        dispatch.drop(w, [queued], "cancel")
                    return
        for w in self.sup.workers.busy():
            running = w.running
            if running is None or running.job.id != job_id or running.job.token != token or w.killed_for:
                continue
            if running.answer_by is not None:
                return  # Asked back while it waited; the worker's answer decides (enforce).
            grace = running.options.cancel_grace if running.options is not None else 0.0
            if grace > 0:
                if running.cancel_at is None:
                    # Tell the task (SIGUSR1 sets the flag ctx.check_cancelled() reads);
                    # kill it if it has not stopped when the grace is over.
                    running.cancel_at = time.monotonic() + grace
                    try:
                        os.kill(w.pid, signal.SIGUSR1)
                    except ProcessLookupError:
                        pass
            else:
                self.kill(w, "cancel", grace=0.0)

    def upcoming(self) -> Iterator[float]:
        """When something of a running job is due (a take-back, its timeout, a kill, a memory read)."""
        for w in self.sup.workers.all:
            if w.kill_at is not None:
                yield w.kill_at
            elif w.running is not None and w.killed_for is None:
                running = w.running
                if any(queued.dropping is None for queued in w.queued):
                    yield running.started + tunables.JOB_AHEAD_MAX_WAIT
                if running.deadline is not None:
                    yield running.deadline
                if running.cancel_at is not None:
                    yield running.cancel_at
                if running.answer_by is not None:
                    yield running.answer_by
                if running.options is not None and running.options.memory_limit_mb is not None:
                    yield self._next_memory_poll

    def enforce(self, now: float) -> None:
        """Act on every deadline that has come: take-backs, cancels, memory limits, timeouts."""
        dispatch = self.sup.dispatch
        poll_memory = now >= self._next_memory_poll
        if poll_memory:
            self._next_memory_poll = now + tunables.MEMORY_POLL_INTERVAL
        for w in list(self.sup.workers.all):
            running = w.running
            if w.queued and running is not None and now >= running.started + tunables.JOB_AHEAD_MAX_WAIT:
                # Behind a long job: the next workers free take them instead.
                dispatch.drop(w, Dispatcher.not_dropping(w), "move")
            if running is not None and w.killed_for is None:
                if running.answer_by is not None and now >= running.answer_by:
                    # Asked back for a cancel while it waited, it started anyway.
                    running.answer_by = None
                    running.dropping = None
                    self.cancel(running.job.id, running.job.token)
                    if w.killed_for is not None:
                        continue
                if running.cancel_at is not None and now >= running.cancel_at:
                    self.kill(w, "cancel", grace=0.0)
                    continue
                limit = running.options.memory_limit_mb if running.options is not None else None
                if poll_memory and limit is not None:
                    rss = tree_rss_kib(w.pid)
                    running.peak_rss_kib = max(running.peak_rss_kib, rss)
                    if rss > limit * 1024:
                        self.kill(w, "memory", grace=0.0)
                        continue
            if w.kill_at is not None and now >= w.kill_at:
                self.kill(w, w.killed_for or "timeout", grace=0.0)
            elif (
                w.running is not None
                and w.killed_for is None
                and w.running.deadline is not None
                and now >= w.running.deadline
            ):
                self.kill(w, "timeout", grace=self.sup.kill_grace)

    def kill(self, w: Worker, reason: str, *, grace: float) -> None:
        """Kill a worker and its descendants; report its job once the process is gone."""
        w.killed_for = reason
        if grace > 0 and w.kill_at is None:
            w.kill_at = time.monotonic() + grace
            signal_tree(w.pid, signal.SIGTERM)
            return
        w.kill_at = None
        self.sup.workers.kill_tree(w)
        w.process.join(tunables.KILL_REAP_WAIT)
        if w in self.sup.workers.all:
            self.sup.on_exit(w)

    def kill_busy_for_drain(self) -> None:
        for w in self.sup.workers.busy():
            if w.killed_for is None:
                self.kill(w, "drain", grace=0.0)
