"""Helpers of the reliability tests: the execution ledger, its audit against the
database, supervisors run as their own processes, and process-tree checks."""

from __future__ import annotations

import os
import signal
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

import stoker
from apps import reliability as reliability_app
from apps import tasks as tasks_app
from conftest import HANG_GUARD, ChildProcess, closing_all, database_files
from stoker._core import Engine

#: ``make stress`` sets this too, for sizes chosen at import time (hypothesis settings).
STRESS = os.environ.get("STOKER_STRESS") == "1"

#: Error kinds of attempts whose worker or supervisor was lost: the only
#: attempts that may have run to their end and still be run again.
LOST_KINDS = {"crash", "lease_expired"}


@dataclass(frozen=True)
class Execution:
    job_id: int
    attempt: int
    pid: int


def read_executions(ledger: Path) -> list[Execution]:
    if not ledger.exists():
        return []
    executions = []
    for line in ledger.read_text().splitlines():
        job_id, attempt, pid = line.split()
        executions.append(Execution(int(job_id), int(attempt), int(pid)))
    return executions


@dataclass
class Audit:
    """What the ledger and the database say about a set of jobs."""

    jobs: int = 0
    complete: int = 0
    dead: int = 0
    cancelled: int = 0
    executions: int = 0
    #: Executions beyond one per job (each belongs to a lost attempt).
    duplicates: int = 0
    #: Attempts that failed as lost (crash or expired lease).
    lost_attempts: int = 0
    problems: list[str] = field(default_factory=list)

    def add(self, other: Audit) -> None:
        """Count ``other`` in this audit too (a soak audits one batch at a time)."""
        for name in ("jobs", "complete", "dead", "cancelled", "executions", "duplicates", "lost_attempts"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.problems.extend(other.problems)

    def summary(self) -> str:
        return (
            f"{self.jobs} jobs: {self.complete} complete, {self.dead} dead, {self.cancelled} cancelled; "
            f"{self.executions} executions, {self.duplicates} duplicates, "
            f"{self.lost_attempts} lost attempts; {len(self.problems)} problems"
        )


def audit(engine: Engine, job_ids: Iterable[int], ledger: Path, *, allow_cancelled: bool = False) -> Audit:
    """Check every job against the ledger.

    - each job is finished: complete (or cancelled, if allowed) or dead;
    - no attempt appears twice in the ledger (no attempt runs twice);
    - a complete job's final attempt ran exactly once and has no error record;
      every other execution in the ledger belongs to an attempt that failed as
      lost (crash or expired lease): duplicates only for killed attempts;
    - one error record per failed attempt, and the counters agree with them;
    - a dead job's history is whole: its crash or failure bound is exhausted.
    """
    result = Audit()
    by_job: dict[int, list[Execution]] = defaultdict(list)
    for execution in read_executions(ledger):
        by_job[execution.job_id].append(execution)
    ids = list(job_ids)
    result.jobs = len(ids)
    problems = result.problems
    for job_id in ids:
        record = engine.get(job_id)
        errors = engine.errors(job_id)
        runs = by_job.pop(job_id, [])
        result.executions += len(runs)
        attempts = [r.attempt for r in runs]
        if len(set(attempts)) != len(attempts):
            problems.append(f"job {job_id}: an attempt ran twice: {sorted(attempts)}")
        error_attempts = {e.attempt: e for e in errors}
        if len(error_attempts) != len(errors):
            problems.append(f"job {job_id}: two error records for one attempt")
        lost = {a for a, e in error_attempts.items() if e.kind in LOST_KINDS}
        result.lost_attempts += len(lost)
        crashes = sum(1 for e in errors if e.kind in LOST_KINDS)
        if (record.crashes, record.failures) != (crashes, len(errors) - crashes):
            problems.append(
                f"job {job_id}: counters crashes={record.crashes} failures={record.failures} "
                f"disagree with {len(errors)} error records"
            )
        if any(a > record.attempt for a in attempts) or any(a > record.attempt for a in error_attempts):
            problems.append(f"job {job_id}: an attempt beyond the job's attempt {record.attempt}")
        status = record.status
        if status == "complete":
            result.complete += 1
            if attempts.count(record.attempt) != 1:
                problems.append(f"job {job_id}: the successful attempt {record.attempt} ran {attempts} times")
            if record.attempt in error_attempts:
                problems.append(f"job {job_id}: the successful attempt also has an error record")
            extra = [a for a in attempts if a != record.attempt]
        elif status == "dead":
            result.dead += 1
            if not (record.crashes > record.max_crashes or record.failures > record.max_retries):
                problems.append(f"job {job_id}: dead with bounds left ({record.crashes} crashes)")
            if record.attempt not in error_attempts:
                problems.append(f"job {job_id}: dead without an error record for its last attempt")
            extra = attempts
        elif status == "cancelled" and allow_cancelled:
            result.cancelled += 1
            extra = attempts
        else:
            problems.append(f"job {job_id}: ended {status} (attempt {record.attempt})")
            continue
        result.duplicates += max(0, len(attempts) - 1)
        for attempt in extra:
            if status == "cancelled" and attempt == record.attempt:
                continue  # Cancelled while it ran: it may have finished before the kill.
            if attempt not in lost:
                problems.append(
                    f"job {job_id}: attempt {attempt} ran but was not lost "
                    f"(errors: {[(e.attempt, e.kind) for e in errors]})"
                )
    for job_id, runs in by_job.items():
        problems.append(f"job {job_id} is not one of ours but ran {len(runs)} times")
    return result


# --- supervisors as processes -----------------------------------------------------------------


class SupervisorProcess(ChildProcess):
    """``python -m stoker worker APP`` on a test's database, output to a file."""

    def __init__(self, db: Path, *extra: str, app: str = "apps.reliability:queue", log: Path | None = None):
        log_path = log or db.with_name(f"supervisor-{time.monotonic_ns()}.log")
        super().__init__(db, "-m", "stoker", "worker", app, *extra, log=log_path)

    def worker_pids(self) -> list[int]:
        return worker_pids_under(self.pid)

    def kill(self) -> list[psutil.Process]:
        """SIGKILL the supervisor alone; returns what descended from it just before."""
        descendants = self.descendants()
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(HANG_GUARD)
        return descendants


#: How the guardian's command line ends (``python .../stoker/pool/guardian.py``).
GUARDIAN_SCRIPT = os.path.join("stoker", "pool", "guardian.py")


def worker_pids_under(pid: int) -> list[int]:
    """Worker processes descending from a supervisor: each leads its own process group.

    The guardian leads its own session too, and is told apart by its command line.
    """
    try:
        descendants = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    pids = []
    for process in descendants:
        try:
            if os.getpgid(process.pid) != process.pid:
                continue
            if any(part.endswith(GUARDIAN_SCRIPT) for part in process.cmdline()):
                continue
            if process.status() == psutil.STATUS_ZOMBIE:
                continue
        except (psutil.NoSuchProcess, ProcessLookupError, psutil.ZombieProcess):
            continue
        pids.append(process.pid)
    return pids


def all_gone(processes: Iterable[psutil.Process]) -> bool:
    """Every process has exited (a zombie counts as gone only if it is not our own child)."""
    for process in processes:
        try:
            if process.status() != psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            continue
    return True


def leftovers(parent: int = 0) -> list[str]:
    """Descendants of ``parent`` (default: this process) that are zombies, and live ones."""
    found = []
    for process in psutil.Process(parent or os.getpid()).children(recursive=True):
        try:
            found.append(f"{process.pid} {process.status()} {' '.join(process.cmdline())[:120]}")
        except psutil.NoSuchProcess:
            continue
    return found


def open_database_files(pid: int, db: str) -> list[str]:
    """Files of the database (main file, -wal, -shm, -journal) that process ``pid`` holds open."""
    files = database_files(db)
    held = []
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except (FileNotFoundError, PermissionError):
        return []
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target in files:
            held.append(target)
    return held


def signal_quietly(pid: int, signum: int) -> bool:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        return False
    return True


# --- fixtures --------------------------------------------------------------------------------


class Scale:
    """Sizes of the reliability tests: bounded by default, full with ``--stress``."""

    def __init__(self, full: bool) -> None:
        self.full = full

    def __call__(self, bounded: int, full: int) -> int:
        return full if self.full else bounded


@pytest.fixture
def scale(request: pytest.FixtureRequest) -> Scale:
    return Scale(STRESS or bool(request.config.getoption("--stress")))


@pytest.fixture
def rqueue(tmp_path: Path) -> stoker.Queue:
    """A queue over a fresh database with the tasks of ``apps.reliability`` and ``apps.tasks``."""
    q = stoker.Queue(tmp_path / "jobs.db")
    q.include(reliability_app.queue)
    q.include(tasks_app.queue)
    return q


@pytest.fixture
def supervisors() -> Iterator[list[SupervisorProcess]]:
    """Supervisor processes a test starts; each is killed and reaped at the end."""
    with closing_all(SupervisorProcess) as started:
        yield started
