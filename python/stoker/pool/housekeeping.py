"""The supervisor's periodic work: what it does on a clock, not for a message.

Each is due at its own time, and :meth:`Housekeeping.run_due` runs what is due
at each turn of the loop (``deadlines`` tells the loop when the next is):

- the heartbeat: every lease this supervisor holds is renewed (and the cancel
  requests of those jobs read), expired leases of any supervisor are reaped,
  the sends logged by dead processes are stored, jobs past their expiry end
  expired, and results past their retention are purged (bounded);
- on PostgreSQL, the registration of this supervisor, renewed, and the jobs of
  lost supervisors reaped;
- the change poll: whether another process changed the database (a send, a
  cancel request, a schedule);
- the next schedule fire;
- the write-ahead log's size, truncated past ``WAL_COMPACT_BYTES``.

The jobs of dead supervisors that no worker of theirs started go back to
pending uncounted (``start_marks.py``): this module keeps the record of what
this supervisor's workers start, and reads those of the dead.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import StorageError
from ..flow import schedule
from . import tunables
from .start_marks import never_started, owner_directory
from .start_marks import remove as remove_starts

if TYPE_CHECKING:
    from .supervisor import Supervisor

log = logging.getLogger("stoker.supervisor")


class Housekeeping:
    """Heartbeat, registration, reaping, purge, WAL compaction, schedule fires and the change poll."""

    def __init__(self, supervisor: Supervisor, *, remote: bool) -> None:
        self.sup = supervisor
        self.remote = remote
        self.change_poll_interval = (
            tunables.REMOTE_CHANGE_POLL_INTERVAL if remote else tunables.CHANGE_POLL_INTERVAL
        )
        self._data_version = -1
        self.next_heartbeat = 0.0
        self.next_poll = 0.0
        self.next_registration = 0.0
        self.next_fire = 0.0
        self.next_wal_check = 0.0
        self.starts_directory: Path | None = None
        """Where this supervisor's workers record the jobs they start (``start_marks``)."""

    def deadlines(self) -> tuple[float, ...]:
        if self.remote:
            return (self.next_heartbeat, self.next_poll, self.next_registration, self.next_fire)
        return (self.next_heartbeat, self.next_poll, self.next_fire)

    def run_due(self, now: float) -> None:
        if now >= self.next_heartbeat:
            self.heartbeat(now)
        if self.remote and now >= self.next_registration:
            self.renew_registration(now)
        if now >= self.next_poll:
            self.poll_changes(now)
        if now >= self.next_fire:
            self.fire_schedules(now)
        if now >= self.next_wal_check:
            self.compact_wal(now)

    # --- leases ------------------------------------------------------------------------

    def heartbeat(self, now: float) -> None:
        sup, engine = self.sup, self.sup.engine
        leases = sup.dispatch.leases()
        if leases:
            # A failed heartbeat is retried with the next storage retry, not a third of a lease later.
            cancels = engine.heartbeat(sup.owner, leases, sup.lease_ms)
        self.next_heartbeat = now + sup.lease * tunables.HEARTBEAT_FRACTION
        if leases:
            tokens = dict(leases)
            for job_id in cancels:
                sup.deadlines.cancel(job_id, tokens[job_id])
        if self.reap_expired():
            sup.dispatch.want_claim = True
        # The sends logged by a process that died before storing them.
        if engine.recover_send_logs():
            sup.dispatch.want_claim = True
        engine.expire_due(tunables.HOUSEKEEPING_BATCH)
        engine.purge_expired_results(tunables.HOUSEKEEPING_BATCH)

    def reap_expired(self) -> list[tuple[int, str]]:
        """Reap expired leases; the jobs of dead supervisors that no worker of
        theirs started go back to pending uncounted first (``start_marks``)."""
        engine, path = self.sup.engine, self.sup.queue.path
        returned: list[tuple[int, str]] = []
        judged: list[tuple[str, Path]] = []
        if self.starts_directory is not None:
            expired = engine.expired_leases(tunables.REAP_BATCH)
            if expired:
                unstarted, judged = never_started(path, expired)
                if unstarted:
                    returned = engine.return_unstarted(unstarted)
        reaped = returned + engine.reap_expired(tunables.REAP_BATCH)
        if judged:
            # A dead owner's record goes once none of its jobs runs any more:
            # the leases of the others may expire a little later.
            running = engine.list_jobs(status="running", limit=tunables.HOUSEKEEPING_BATCH)
            if len(running) < tunables.HOUSEKEEPING_BATCH:
                owners = {record.lease_owner for record in running}
                for owner, directory in judged:
                    if owner not in owners:
                        remove_starts(directory)
        return reaped

    def prepare_starts_directory(self) -> Path | None:
        directory = owner_directory(self.sup.queue.path, self.sup.owner)
        if directory is None:
            return None
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            # Without it, a job of this supervisor's that never started counts
            # as lost if the supervisor dies: what it always did.
            log.warning("cannot record the jobs this supervisor's workers start (%s): %s", directory, error)
            return None
        self.starts_directory = directory
        return directory

    def remove_starts_directory(self, *, unstored: bool) -> None:
        """At the end of a stop: the record of what the workers started is kept
        only while some outcome was left ``unstored``, for the reaper of those leases."""
        if self.starts_directory is not None and not unstored:
            remove_starts(self.starts_directory)

    # --- registration (PostgreSQL) ---------------------------------------------------------

    def renew_registration(self, now: float) -> None:
        """Renew this supervisor's registration and reap the jobs of lost ones."""
        self.sup.engine.register_supervisor(
            self.sup.owner, socket.gethostname(), os.getpid(), round(tunables.REGISTRATION_LEASE * 1000)
        )
        self.next_registration = now + tunables.REGISTRATION_RENEW_INTERVAL
        if self.reap_expired():
            self.sup.dispatch.want_claim = True

    def deregister(self) -> None:
        try:
            self.sup.engine.deregister_supervisor(self.sup.owner)
        except StorageError as error:
            # The registration then expires on its own, with nothing left to reap.
            log.warning("could not remove this supervisor's registration: %s", error)

    # --- changes -------------------------------------------------------------------------------

    def poll_changes(self, now: float) -> None:
        sup = self.sup
        self.next_poll = now + self.change_poll_interval
        version = sup.engine.data_version()
        if version == self._data_version:
            return
        sup.dispatch.want_claim = True
        self.next_fire = min(self.next_fire, now)  # A schedule may have been added.
        if sup.workers.busy() or sup.dispatch.held:
            for job_id, token in sup.engine.cancel_requests(sup.owner):
                sup.deadlines.cancel(job_id, token)
        # Only now: if reading the cancel requests failed, the next poll reads them again.
        self._data_version = version

    def fire_schedules(self, now: float) -> None:
        """Fire the due schedules, then sleep until the next fire (or a change)."""
        engine = self.sup.engine
        if schedule.fire_due(engine, self.sup.queue, self.sup.owner):
            self.sup.dispatch.want_claim = True
        self.next_fire = now + 3600.0
        next_ms = engine.next_fire_ms()
        if next_ms is not None:
            delay = max(0.0, (next_ms - engine.now_ms()) / 1000)
            self.next_fire = min(self.next_fire, time.monotonic() + delay)

    def compact_wal(self, now: float) -> None:
        self.next_wal_check = now + tunables.WAL_CHECK_INTERVAL
        path = self.sup.queue.path
        if path == ":memory:" or self.remote:
            return
        try:
            size = os.stat(path + "-wal").st_size
        except OSError:
            return
        if size > tunables.WAL_COMPACT_BYTES and not self.sup.engine.compact_log(
            tunables.WAL_COMPACT_WAIT_MS
        ):
            log.debug("the write-ahead log (%d bytes) is in use; truncating it later", size)

    def close_send_log(self) -> None:
        self.sup.limit_storage_wait()
        try:
            self.sup.engine.close_send_log()
        except StorageError as error:
            # They stay in the log file: the next transaction of this process
            # stores them, or, if it ends first, the next process to open the
            # database or the next heartbeat of any supervisor.
            log.warning("the sends still in this process's send log were not stored now: %s", error)
