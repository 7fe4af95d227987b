"""Claiming, and the jobs sent ahead: which job goes to which worker, and when.

The policy is pure code, tested without processes (tests/pool/test_dispatch.py):

- :func:`jobs_ahead_for`, :func:`ahead_per_worker` and :func:`claim_limit`:
  how many jobs to claim, one per idle slot plus the ones held ahead;
- :func:`takes_job_ahead`: whether a busy worker is sent its next job now;
- :func:`jobs_to_ask_back`: which jobs waiting behind running ones go to an
  idle worker instead;
- :class:`HeldJobs`: the jobs claimed (leased to this supervisor) that no
  worker has started, in claim order, with their "held" marks.

:class:`Dispatcher` applies it to the supervisor's workers: it claims (with the
completions read since the last claim, in one transaction), sends each job to
a worker, starts the jobs sent ahead in turn, and takes them back
(cancels, deadlines and kills are ``deadlines.py``'s).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Protocol

from .._core import ClaimedJob
from ..client.registry import REGISTRY
from ..errors import StorageError
from . import tunables
from .processes import Running, Worker
from .protocol import DROP_FRAME, Run

if TYPE_CHECKING:
    from .supervisor import Supervisor


# --- the policy --------------------------------------------------------------------------


def jobs_ahead_for(typical_job_s: float | None) -> int:
    """How many jobs may wait in the pipe of a worker whose jobs take ``typical_job_s``."""
    if typical_job_s is None:
        return 1  # Its jobs' length is not known yet.
    if typical_job_s * tunables.JOBS_AHEAD_MAX <= tunables.JOB_AHEAD_WORK:
        return tunables.JOBS_AHEAD_MAX
    return max(1, int(tunables.JOB_AHEAD_WORK / typical_job_s))


def average(average: float | None, value: float) -> float:
    """The running average of job lengths, with ``value`` the last one (JOB_LENGTH_SMOOTHING)."""
    return value if average is None else average + (value - average) * tunables.JOB_LENGTH_SMOOTHING


def ahead_per_worker(prefetch: int, typical_job_s: float | None) -> int:
    """Jobs claimed ahead per worker: ``prefetch``, or more while jobs are short."""
    if prefetch == 0:
        return 0
    return max(prefetch, jobs_ahead_for(typical_job_s))


def claim_limit(*, processes: int, idle: int, busy: int, held_ahead: int, per_worker: int) -> int:
    """How many jobs to claim now: one for every idle worker, plus the ones claimed ahead.

    ``held_ahead`` counts the jobs held here and those in busy workers' pipes.
    The jobs in a stopped worker's pipe (asked back, not answered) can exceed
    the budget for as long as it is stopped: an idle worker still gets its job.
    """
    free_slots = processes - busy
    return min(free_slots, idle) + max(0, processes * per_worker - held_ahead)


class StartedJob(Protocol):
    """What :func:`takes_job_ahead` reads of a worker's running job."""

    @property
    def started(self) -> float: ...
    @property
    def cancel_at(self) -> float | None: ...
    @property
    def answer_by(self) -> float | None: ...


class BusyWorker(Protocol):
    """What :func:`takes_job_ahead` reads of a worker."""

    @property
    def running(self) -> StartedJob | None: ...
    @property
    def queued(self) -> Sequence[object]: ...
    @property
    def killed_for(self) -> str | None: ...
    @property
    def retiring(self) -> bool: ...
    @property
    def last_job_s(self) -> float: ...
    @property
    def typical_job_s(self) -> float | None: ...
    @property
    def tasks_done(self) -> int: ...


def takes_job_ahead(
    w: BusyWorker,
    now: float,
    *,
    typical_job_s: float | None,
    max_tasks_per_worker: int | None,
    memory_limited: bool,
) -> bool:
    """Whether a busy worker can be sent its next job now, to start when its current one ends.

    ``typical_job_s`` is the pool's, for a worker with no job ended yet;
    ``memory_limited``: the pool recycles workers over a memory limit.
    """
    running = w.running
    if running is None or w.killed_for is not None or w.retiring:
        return False
    # A new worker runs what the others ran.
    typical = typical_job_s if w.typical_job_s is None else w.typical_job_s
    if len(w.queued) >= jobs_ahead_for(typical):
        return False
    if now - running.started >= tunables.JOB_AHEAD_MAX_WAIT or w.last_job_s >= tunables.JOB_AHEAD_MAX_WAIT:
        return False  # Long jobs: the next worker free takes the next one.
    if running.cancel_at is not None or running.answer_by is not None:
        return False  # Its worker may be killed soon, for the running job.
    # A worker about to be recycled must not hold a job it would not run.
    if memory_limited:
        return False
    return max_tasks_per_worker is None or w.tasks_done + 1 + len(w.queued) < max_tasks_per_worker


def jobs_to_ask_back(lines: Sequence[list[Running]], idle: int) -> list[list[Running]]:
    """Which of the jobs waiting in the ``lines`` of busy workers go to ``idle`` idle ones.

    One per idle worker, each time the last job of the longest line (the one
    that would start last); the result is, for each line, the jobs to ask back.
    """
    waiting = [list(line) for line in lines]
    asked: list[list[Running]] = [[] for _ in lines]
    for _ in range(idle):
        if not waiting:
            break
        longest = max(range(len(waiting)), key=lambda i: len(waiting[i]))
        if not waiting[longest]:
            break
        asked[longest].append(waiting[longest].pop())
    return asked


class HeldJobs:
    """The jobs claimed (leased to this supervisor) that no worker has started, in claim order.

    Jobs held here, sent to no worker, cannot have started: the database marks
    them ("held"), so that if this supervisor dies the lease reaper gives them
    back with no crash counted and no error record. A job claimed and sent to
    a worker in the same turn, the common case, is never marked. One still held
    after the turn that claimed or got it back is marked with the next commit;
    it is unmarked with a commit before it is sent, so that no job that may have
    run keeps the mark.
    """

    def __init__(self) -> None:
        self._line: deque[ClaimedJob] = deque()
        self._serial = 0
        self._given_back: dict[int, int] = {}
        """The jobs in the line given back from a worker's pipe: id -> serial."""
        self._marked: set[int] = set()
        """Jobs whose held mark is committed."""
        self._to_mark: dict[int, int] = {}
        """Jobs (id -> token) to mark with the next commit."""
        self._to_unmark: dict[int, int] = {}
        """Marked jobs (id -> token) to unmark with the next commit, so they can be sent."""

    def __len__(self) -> int:
        return len(self._line)

    def __bool__(self) -> bool:
        return bool(self._line)

    def __iter__(self) -> Iterator[ClaimedJob]:
        return iter(self._line)

    def extend(self, claimed: Iterable[ClaimedJob]) -> None:
        self._line.extend(claimed)

    def take(self) -> tuple[ClaimedJob, int] | None:
        """The next job, with its serial (claim order), if it may go to a worker now."""
        if not self._line or not self._may_send(self._line[0]):
            return None
        job = self._line.popleft()
        serial = self._given_back.pop(job.id, None) if self._given_back else None
        if serial is None:
            self._serial += 1
            serial = self._serial
        return job, serial

    def _may_send(self, job: ClaimedJob) -> bool:
        if self._to_mark.pop(job.id, None) is not None:
            return True  # Its mark was not committed yet.
        if job.id not in self._marked:
            return True
        # Unmarked with this turn's commit, then sent; with it, the others held here,
        # which would go next.
        for waiting in self._line:
            if waiting.id in self._marked:
                self._to_unmark.setdefault(waiting.id, waiting.token)
        return False

    def give_back(self, job: ClaimedJob, serial: int) -> None:
        """A job sent ahead came back unstarted: it goes before every job not sent yet,
        in its claim order among the others given back."""
        place = 0
        for waiting in self._line:
            given_back = self._given_back.get(waiting.id)
            if given_back is None or given_back > serial:
                break
            place += 1
        self._line.insert(place, job)
        self._given_back[job.id] = serial

    def remove(self, job_id: int, token: int) -> bool:
        """Take a job out (it is cancelled); False if it is not held here."""
        for job in self._line:
            if job.id == job_id and job.token == token:
                self._line.remove(job)
                self._given_back.pop(job_id, None)
                self._forget(job_id)
                return True
        return False

    def take_all(self) -> list[ClaimedJob]:
        """Every job held (stopping: they are released)."""
        self._given_back.clear()
        jobs = list(self._line)
        self._line.clear()
        for job in jobs:
            self._forget(job.id)
        return jobs

    def _forget(self, job_id: int) -> None:
        self._marked.discard(job_id)
        self._to_mark.pop(job_id, None)
        self._to_unmark.pop(job_id, None)

    # --- marks ----------------------------------------------------------------------------

    @property
    def marks_pending(self) -> bool:
        return bool(self._to_mark or self._to_unmark)

    def mark_held(self) -> None:
        """Mark, with the next commit, the jobs held here that are not marked."""
        for job in self._line:
            if job.id not in self._marked and job.id not in self._to_unmark:
                self._to_mark.setdefault(job.id, job.token)

    def take_marks(self) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """The marks and unmarks for this commit: ``(held, sent)``."""
        held, sent = list(self._to_mark.items()), list(self._to_unmark.items())
        self._to_mark, self._to_unmark = {}, {}
        return held, sent

    def restore_marks(self, held: list[tuple[int, int]], sent: list[tuple[int, int]]) -> None:
        """The commit failed: its marks and unmarks wait for the next one."""
        self._to_mark = dict(held) | self._to_mark
        self._to_unmark = dict(sent) | self._to_unmark

    def marks_committed(self, held: list[tuple[int, int]], sent: list[tuple[int, int]]) -> None:
        self._marked.difference_update(job_id for job_id, _ in sent)
        if held:
            still_held = {job.id for job in self._line}
            self._marked.update(job_id for job_id, _ in held if job_id in still_held)


def deadline_of(job: ClaimedJob, started: float) -> float | None:
    return None if job.timeout_ms is None else started + job.timeout_ms / 1000


class Dispatcher:
    """The jobs of one supervisor between their claim and their outcome."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.sup = supervisor
        self.workers = supervisor.workers
        self.held = HeldJobs()
        self.want_claim = True
        """Claim at the next turn (a job may be runnable); cleared while nothing is."""
        self.next_wakeup: float | None = None
        """When the engine's next eta, lease expiry or limit refill comes."""
        self.typical_job_s: float | None = None
        """A running average of how long jobs ran, on every worker (sets how many are claimed ahead)."""
        self.yield_core = False
        """Give up the core once after this wake-up's reading (YIELD_AFTER_JOB_OF)."""

    def _running_on(self) -> bool:
        """Whether jobs still go to workers (not stopping)."""
        return not self.sup.stop_requests and not self.sup.shutting_down

    # --- claiming -------------------------------------------------------------------------

    def claim_limit(self) -> int:
        return claim_limit(
            processes=self.sup.processes,
            idle=len(self.workers.idle()),
            busy=len(self.workers.busy()),
            held_ahead=len(self.held) + sum(len(w.queued) for w in self.workers.all),
            per_worker=ahead_per_worker(self.sup.prefetch, self.typical_job_s),
        )

    def claim_and_dispatch(self, now: float) -> None:
        """Start jobs on idle workers; store completions and claim more in one transaction."""
        self.dispatch_held(now)
        limit = self.claim_limit() if self.want_claim else 0
        if limit <= 0:
            self.flush_completions()
            self.dispatch_held(now)  # What an unmark just committed lets go.
            self.held.mark_held()
            self._move_queued_to_idle()
            return
        # Cleared before the claim, so that a send committed after the claim's
        # snapshot sees it and wakes this loop (see Supervisor.notify); set
        # again below if the claim came back full.
        self.want_claim = False
        try:
            claimed = self._commit(limit)
        except StorageError:
            self.want_claim = True
            raise
        if len(claimed) < limit:
            # Nothing more is runnable now: sleep until a change or the next eta.
            self._schedule_wakeup()
        else:
            self.want_claim = True
        self.held.extend(claimed)
        self.dispatch_held(now)
        self.held.mark_held()
        self._move_queued_to_idle()

    def flush_completions(self) -> None:
        """Store the completions read (and the held marks) without claiming."""
        if not (self.sup.outcomes.completions or self.held.marks_pending) or self.sup.outbox.retrying:
            return
        self.sup.limit_storage_wait()
        self._commit(0)

    def _commit(self, limit: int) -> list[ClaimedJob]:
        outcomes, sup = self.sup.outcomes, self.sup
        batch = outcomes.take_completions()
        held, sent = self.held.take_marks()
        try:
            if limit or held or sent:
                applied, claimed = sup.engine.complete_and_claim(
                    batch, sup.queues, limit, sup.owner, sup.lease_ms, held=held, sent=sent
                )
            else:
                applied, claimed = sup.engine.complete_many(batch), []
        except StorageError:
            # Kept for the next try; if this supervisor stops first, the jobs run again.
            outcomes.restore_completions(batch)
            self.held.restore_marks(held, sent)
            raise
        self.held.marks_committed(held, sent)
        outcomes.completions_stored(batch, applied)
        return claimed

    def _schedule_wakeup(self) -> None:
        engine = self.sup.engine
        wake_ms = engine.next_wakeup_ms()
        if wake_ms is None:
            self.next_wakeup = None
            return
        # One millisecond past it: a lease counts as expired only after its deadline.
        delay = max(0.0, (wake_ms + 1 - engine.now_ms()) / 1000)
        self.next_wakeup = time.monotonic() + delay

    def nothing_left(self) -> bool:
        # The last claim came back short (no runnable job in our queues), and the
        # engine knows of no future eta and no running job of any supervisor.
        return not self.want_claim and not self.workers.busy() and not self.held and self.next_wakeup is None

    def leases(self) -> list[tuple[int, int]]:
        """Every job this supervisor holds: running, in a worker's pipe, or here."""
        leases = [(w.running.job.id, w.running.job.token) for w in self.workers.all if w.running]
        leases += [(queued.job.id, queued.job.token) for w in self.workers.all for queued in w.queued]
        leases += [(job.id, job.token) for job in self.held]
        return leases

    # --- sending ----------------------------------------------------------------------------

    def dispatch_held(self, now: float) -> None:
        """Send the jobs held here to idle workers, and, while every slot is busy, ahead to busy ones."""
        if not self.held:
            return
        busy = len(self.workers.busy())
        free_slots = self.sup.processes - busy
        if free_slots > 0:
            for worker in self.workers.idle()[:free_slots]:
                taken = self.held.take()
                if taken is None:
                    break
                self._send(*taken, worker, now)
        if self.sup.stop_requests or len(self.workers.busy()) < self.sup.processes:
            return  # A slot is free (its worker is starting): the job waits for it here.
        memory_limited = self.sup.max_worker_memory_mb is not None

        def takes(worker: Worker) -> bool:
            return takes_job_ahead(
                worker,
                now,
                typical_job_s=self.typical_job_s,
                max_tasks_per_worker=self.sup.max_tasks_per_worker,
                memory_limited=memory_limited,
            )

        # Round by round, one job to each worker that takes one, until the pipes
        # are full or nothing is held: every job claimed for them goes out this
        # turn, evenly. A job left here across a turn would cost two more writes
        # (its held mark, then the unmark before it is sent) and a turn's wait.
        takers = [worker for worker in self.workers.all if takes(worker)]
        while takers and self.held:
            for worker in takers:
                taken = self.held.take()
                if taken is None:
                    return
                self._send(*taken, worker, now, ahead=True)
            takers = [worker for worker in takers if takes(worker)]

    def _send(self, job: ClaimedJob, serial: int, worker: Worker, now: float, *, ahead: bool = False) -> None:
        task = REGISTRY.find(job.task_name, self.sup.task_scope)
        seq = worker.runs_sent + 1
        try:
            worker.channel.send(
                Run(job.id, job.token, job.attempt, job.task_name, job.payload, job.labels, seq)
            )
        except OSError:
            # The worker died between its last message and this one; the job never
            # started, so it goes back without counting an attempt.
            self.sup.outcomes.requeue_later(job.id, job.token)
            self.want_claim = True
            return
        worker.runs_sent = seq
        options = task.options_ if task is not None else None
        if ahead:
            # Its clock starts when the job before it ends (_start_queued).
            worker.queued.append(Running(job, now, None, options, serial=serial, seq=seq))
        else:
            worker.running = Running(job, now, deadline_of(job, now), options, serial=serial, seq=seq)

    def _start_queued(self, w: Worker, now: float) -> None:
        """The running job of ``w`` ended: the first job sent ahead has started."""
        if not w.queued:
            return
        queued = w.queued.popleft()
        queued.started = now
        queued.deadline = deadline_of(queued.job, now)
        if queued.dropping == "cancel":
            # The worker answers Dropped at once if it had not started it.
            queued.answer_by = now + tunables.DROP_ANSWER_WAIT
        w.running = queued

    def finish_running(self, w: Worker, job_id: int, token: int) -> bool:
        """The outcome of ``w``'s running job came: whether it counts (not a job killed meanwhile)."""
        running = w.running
        if running is None or running.job.id != job_id or running.job.token != token:
            return False
        if w.killed_for and not running.condemned:
            # It ended just as its worker was being killed for it: the kill's
            # outcome stands. The worker may have gone on to the first job sent
            # ahead: that one counts as started (condemned), and dies with it.
            if w.queued:
                w.running = None
                self.sup.outcomes.killed_or_lost(w, running)
                self._start_queued(w, time.monotonic())
                if w.running is not None:
                    w.running.condemned = True
            return False
        w.running = None
        w.tasks_done += 1
        self.want_claim = True
        now = time.monotonic()
        w.last_job_s = now - running.started
        w.typical_job_s = average(w.typical_job_s, w.last_job_s)
        self.typical_job_s = average(self.typical_job_s, w.last_job_s)
        if w.last_job_s >= tunables.YIELD_AFTER_JOB_OF:
            self.yield_core = True
        if w.queued:
            self._start_queued(w, now)
            if w.killed_for is not None and w.running is not None:
                # Ended after its worker was killed for the job before it: the
                # worker may have started the next one too.
                w.running.condemned = True
        if self.workers.should_recycle(w):
            self.workers.retire(w)
        elif self._running_on():
            # The worker waits for its next job from now on: hand it the one
            # claimed ahead at once, before the rest of this wake-up's work.
            self.dispatch_held(now)
        return True

    # --- taking back ------------------------------------------------------------------------

    def drop(self, w: Worker, jobs: list[Running], reason: str) -> None:
        """Ask a worker for jobs sent ahead to it back; it answers Dropped for each it has not started."""
        # No signal: a thread of the worker reads these while its task runs,
        # and the task is not interrupted (a signal would cut short a sleep or
        # a blocking call in its C code).
        try:
            for queued in jobs:
                frame = DROP_FRAME.pack(queued.seq, queued.job.id, queued.job.token)
                if not w.channel.send_drop(frame):
                    return  # Not taken now (a full pipe): asked again at a later turn.
                queued.dropping = reason
        except OSError:
            pass  # The worker is gone: its sentinel hands the jobs back (Supervisor.on_exit).

    @staticmethod
    def not_dropping(w: Worker) -> list[Running]:
        return [queued for queued in w.queued if queued.dropping is None]

    def _move_queued_to_idle(self) -> None:
        """Nothing else to run and a slot idle: ask back jobs waiting behind running ones."""
        if self.held or self.want_claim or self.sup.stop_requests:
            return
        idle = min(self.sup.processes - len(self.workers.busy()), len(self.workers.idle()))
        if idle <= 0:
            return
        workers = self.workers.all
        lines = [self.not_dropping(w) if w.killed_for is None else [] for w in workers]
        for w, asked in zip(workers, jobs_to_ask_back(lines, idle), strict=True):
            self.drop(w, asked, "move")

    def drop_queued(self) -> None:
        """Stopping: ask every worker for the jobs sent ahead to it back, to be released."""
        for w in self.workers.all:
            if not w.exited:
                self.drop(w, self.not_dropping(w), "release")

    def on_dropped(self, w: Worker, job_id: int, token: int) -> None:
        """A worker gave back a job sent ahead without starting it."""
        for held in (w.running, *w.queued):
            if held is not None and held.job.id == job_id and held.job.token == token:
                break
        else:
            return
        if held is w.running:
            # It had been counted as started when the job before it ended:
            # the worker went on to the next one in its pipe instead.
            w.running = None
            self.want_claim = True
            self._start_queued(w, time.monotonic())
        else:
            w.queued = deque(queued for queued in w.queued if queued is not held)
        self._return_unstarted(held)
        if self._running_on():
            self.dispatch_held(time.monotonic())

    def _return_unstarted(self, held: Running) -> None:
        """A job sent ahead that never started: cancelled, released, or run by another worker."""
        job = held.job
        outcomes = self.sup.outcomes
        if held.dropping == "cancel":
            outcomes.cancel_later(job.id, job.token)
        elif held.dropping == "release" or not self._running_on():
            outcomes.release_later(job.id, job.token)
        else:
            # Still leased to this supervisor, and no attempt of it ran.
            self.held.give_back(job, held.serial)
            self.want_claim = True

    def return_all_unstarted(self, w: Worker) -> None:
        """``w`` is gone: the jobs still in its pipe never started."""
        while w.queued:
            self._return_unstarted(w.queued.popleft())

    def release_held(self) -> None:
        """Put the jobs claimed ahead back to pending (stopping), as if never claimed."""
        for job in self.held.take_all():
            self.sup.outcomes.release_later(job.id, job.token)
