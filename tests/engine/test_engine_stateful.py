"""A model-based test of the engine binding: random sequences of operations
on a manual clock, checked after every step against a simple Python model.

The model predicts every status, counter, lease and eta; the invariants the
design promises (one status per job, live leases on running jobs, terminal
states that never change, attempts that never decrease, nothing claimed before
its eta, claims in priority-then-age order, stale outcomes that change
nothing) are checked on top of the exact comparison.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from conftest import pg_schema
from stoker._core import Engine, NewJob

T0 = 1_700_000_000_000
OWNERS = ["sup-a", "sup-b"]
TERMINAL = {"complete", "dead", "cancelled"}


@dataclass
class ModelJob:
    priority: int
    status: str
    eta_ms: int
    max_retries: int
    max_crashes: int
    backoff_base_ms: int
    backoff_cap_ms: int
    jitter: float
    attempt: int = 0
    failures: int = 0
    crashes: int = 0
    lease_owner: str | None = None
    lease_deadline_ms: int | None = None
    cancel_requested: bool = False
    replayed_from: int | None = None


def backoff(n: int, base: int, cap: int) -> int:
    return min(cap, base * 2 ** (n - 1))


class EngineMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="stoker-stateful-")
        self.engine = self.open_engine()
        self.now = T0
        self.jobs: dict[int, ModelJob] = {}
        self.stale_count = 0
        self.seen_attempts: dict[int, int] = {}
        self.seen_terminal: dict[int, str] = {}

    def open_engine(self) -> Engine:
        return Engine(str(Path(self.dir) / "jobs.db"), clock_ms=T0)

    def teardown(self) -> None:
        del self.engine
        shutil.rmtree(self.dir, ignore_errors=True)

    # --- model queries ---------------------------------------------------------------

    def ids_with(self, *statuses: str) -> list[int]:
        return [i for i, j in self.jobs.items() if j.status in statuses]

    def runnable(self) -> list[int]:
        ready = [
            i
            for i, j in self.jobs.items()
            if j.status == "pending" or (j.status == "scheduled" and j.eta_ms <= self.now)
        ]
        return sorted(ready, key=lambda i: (-self.jobs[i].priority, i))

    def snapshot(self, job_id: int) -> tuple[object, ...]:
        r = self.engine.get(job_id)
        return (
            r.status,
            r.attempt,
            r.failures,
            r.crashes,
            r.eta_ms,
            r.lease_owner,
            r.lease_deadline_ms,
            r.cancel_requested,
            r.finished_ms,
            r.result,
        )

    def apply_failure(self, job_id: int, kind: str, retryable: bool, outcome: tuple[str, int | None]) -> None:
        j = self.jobs[job_id]
        if kind in ("crash", "lease_expired"):
            j.crashes += 1
            count, bound = j.crashes, j.max_crashes
        else:
            j.failures += 1
            count, bound = j.failures, j.max_retries
        j.lease_owner = None
        j.lease_deadline_ms = None
        if j.cancel_requested:
            # A pending cancel request wins over a retry: the job ends cancelled.
            assert outcome == ("cancelled", None), (job_id, outcome)
            j.status = "cancelled"
        elif retryable and count <= bound:
            full = backoff(count, j.backoff_base_ms, j.backoff_cap_ms)
            assert outcome[0] == "retry", (job_id, outcome)
            eta = outcome[1]
            assert eta is not None
            delay = eta - self.now
            assert full * (1 - j.jitter) - 1e-6 <= delay <= full, (delay, full, j.jitter)
            j.eta_ms = eta
            j.status = "scheduled" if delay > 0 else "pending"
        else:
            assert outcome == ("dead", None), (job_id, outcome)
            j.status = "dead"

    # --- rules --------------------------------------------------------------------

    @rule(
        priority=st.integers(-3, 3),
        delay=st.sampled_from([0, 0, 0, 50, 300]),
        max_retries=st.integers(0, 2),
        max_crashes=st.integers(0, 2),
        base=st.sampled_from([0, 10, 100]),
        jitter=st.sampled_from([0.0, 0.0, 0.5]),
        count=st.integers(1, 3),
    )
    def enqueue(
        self,
        priority: int,
        delay: int,
        max_retries: int,
        max_crashes: int,
        base: int,
        jitter: float,
        count: int,
    ) -> None:
        cap = base * 3
        new = NewJob(
            "t",
            b"p",
            priority=priority,
            delay_ms=delay,
            max_retries=max_retries,
            max_crashes=max_crashes,
            backoff_base_ms=base,
            backoff_cap_ms=cap,
            jitter=jitter,
        )
        ids = self.engine.enqueue([new] * count)
        assert len(ids) == count and ids == sorted(ids)
        for job_id in ids:
            assert job_id not in self.jobs
            self.jobs[job_id] = ModelJob(
                priority=priority,
                status="pending" if delay == 0 else "scheduled",
                eta_ms=self.now + delay,
                max_retries=max_retries,
                max_crashes=max_crashes,
                backoff_base_ms=base,
                backoff_cap_ms=cap,
                jitter=jitter,
            )

    @rule(limit=st.integers(1, 3), owner=st.sampled_from(OWNERS), lease=st.sampled_from([100, 500]))
    def claim(self, limit: int, owner: str, lease: int) -> None:
        expected = self.runnable()[:limit]
        claimed = self.engine.claim(["default"], limit, owner, lease)
        # A claim first promotes every scheduled job whose eta has come.
        for j in self.jobs.values():
            if j.status == "scheduled" and j.eta_ms <= self.now:
                j.status = "pending"
        assert [c.id for c in claimed] == expected, "claims follow priority desc, then id asc"
        for c in claimed:
            j = self.jobs[c.id]
            assert j.eta_ms <= self.now, "nothing is claimed before its eta"
            j.attempt += 1
            assert (c.token, c.attempt) == (j.attempt, j.attempt)
            assert c.lease_deadline_ms == self.now + lease
            j.status = "running"
            j.lease_owner = owner
            j.lease_deadline_ms = self.now + lease
            j.cancel_requested = False

    @precondition(lambda self: self.ids_with("running"))
    @rule(data=st.data(), owner=st.sampled_from(OWNERS), lease=st.sampled_from([100, 500]))
    def heartbeat(self, data: st.DataObject, owner: str, lease: int) -> None:
        running = self.ids_with("running")
        chosen = data.draw(st.lists(st.sampled_from(running), min_size=1, max_size=3, unique=True))
        leases = [(i, self.jobs[i].attempt) for i in chosen]
        expected_cancel = []
        for job_id in chosen:
            j = self.jobs[job_id]
            if j.lease_owner == owner:
                j.lease_deadline_ms = self.now + lease
                if j.cancel_requested:
                    expected_cancel.append(job_id)
            else:
                self.stale_count += 1
        assert self.engine.heartbeat(owner, leases, lease) == expected_cancel

    @precondition(lambda self: self.ids_with("running"))
    @rule(data=st.data())
    def complete(self, data: st.DataObject) -> None:
        job_id = data.draw(st.sampled_from(self.ids_with("running")))
        j = self.jobs[job_id]
        assert self.engine.complete(job_id, j.attempt, b"result") is True
        j.status = "complete"
        j.lease_owner = None
        j.lease_deadline_ms = None

    @precondition(lambda self: self.ids_with("running"))
    @rule(data=st.data(), kind=st.sampled_from(["error", "timeout", "crash"]), retryable=st.booleans())
    def fail(self, data: st.DataObject, kind: str, retryable: bool) -> None:
        job_id = data.draw(st.sampled_from(self.ids_with("running")))
        outcome = self.engine.fail(
            job_id,
            self.jobs[job_id].attempt,
            kind=kind,
            exc_type="builtins.E",
            message="m",
            retryable=retryable,
        )
        self.apply_failure(job_id, kind, retryable, outcome)

    @precondition(lambda self: self.jobs)
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        job_id = data.draw(st.sampled_from(sorted(self.jobs)))
        j = self.jobs[job_id]
        result = self.engine.cancel(job_id)
        if j.status in ("pending", "scheduled"):
            assert result == "cancelled"
            j.status = "cancelled"
        elif j.status == "running":
            assert result == "requested"
            j.cancel_requested = True
        else:
            assert result == j.status

    @precondition(lambda self: any(j.status == "running" and j.cancel_requested for j in self.jobs.values()))
    @rule(data=st.data())
    def finish_cancelled(self, data: st.DataObject) -> None:
        owner = data.draw(st.sampled_from(OWNERS))
        requests = self.engine.cancel_requests(owner)
        expected = sorted(
            (i, j.attempt)
            for i, j in self.jobs.items()
            if j.status == "running" and j.cancel_requested and j.lease_owner == owner
        )
        assert requests == expected
        for job_id, token in requests:
            assert self.engine.finish_cancelled(job_id, token) is True
            j = self.jobs[job_id]
            j.status = "cancelled"
            j.lease_owner = None
            j.lease_deadline_ms = None

    @precondition(lambda self: self.ids_with("running"))
    @rule(data=st.data())
    def requeue(self, data: st.DataObject) -> None:
        job_id = data.draw(st.sampled_from(self.ids_with("running")))
        j = self.jobs[job_id]
        assert self.engine.requeue(job_id, j.attempt) is True
        j.eta_ms = self.now
        # A job whose cancel was requested ends cancelled instead of pending.
        j.status = "cancelled" if j.cancel_requested else "pending"
        j.lease_owner = None
        j.lease_deadline_ms = None

    @rule(ms=st.sampled_from([1, 50, 99, 100, 101, 300, 600]))
    def advance_clock(self, ms: int) -> None:
        self.engine.advance_clock(ms)
        self.now += ms

    @rule()
    def reap(self) -> None:
        expired = sorted(
            (j.lease_deadline_ms, i)
            for i, j in self.jobs.items()
            if j.status == "running" and j.lease_deadline_ms is not None and j.lease_deadline_ms < self.now
        )
        reaped = self.engine.reap_expired(100)
        assert [i for i, _ in reaped] == [i for _, i in expired]
        for job_id, outcome in reaped:
            # reap_expired reports only the outcome name; the eta is read back.
            eta = self.engine.get(job_id).eta_ms if outcome == "retry" else None
            self.apply_failure(job_id, "lease_expired", True, (outcome, eta))

    @precondition(lambda self: self.ids_with("dead"))
    @rule(data=st.data())
    def replay(self, data: st.DataObject) -> None:
        old_id = data.draw(st.sampled_from(self.ids_with("dead")))
        new_id = self.engine.replay(old_id)
        old = self.jobs[old_id]
        self.jobs[new_id] = replace(
            old,
            status="pending",
            eta_ms=self.now,
            attempt=0,
            failures=0,
            crashes=0,
            lease_owner=None,
            lease_deadline_ms=None,
            cancel_requested=False,
            replayed_from=old_id,
        )

    @precondition(lambda self: self.jobs)
    @rule(
        data=st.data(),
        outcome=st.sampled_from(["complete", "fail", "heartbeat", "requeue", "cancel"]),
        shift=st.sampled_from([-1, 1]),
    )
    def stale_outcome(self, data: st.DataObject, outcome: str, shift: int) -> None:
        job_id = data.draw(st.sampled_from(sorted(self.jobs)))
        j = self.jobs[job_id]
        # A token other than the current attempt; for a job that is not running
        # even its latest token is stale.
        token = j.attempt + shift if j.status == "running" else j.attempt
        before = self.snapshot(job_id)
        if outcome == "complete":
            assert self.engine.complete(job_id, token, b"late") is False
        elif outcome == "fail":
            assert self.engine.fail(job_id, token, kind="error", exc_type="E", message="late") == (
                "stale",
                None,
            )
        elif outcome == "heartbeat":
            assert self.engine.heartbeat(j.lease_owner or "sup-a", [(job_id, token)], 500) == []
        elif outcome == "requeue":
            assert self.engine.requeue(job_id, token) is False
        else:
            assert self.engine.finish_cancelled(job_id, token) is False
        self.stale_count += 1
        assert self.snapshot(job_id) == before, "a stale outcome changes nothing"

    # --- invariants -----------------------------------------------------------------

    @invariant()
    def rows_match_the_model(self) -> None:
        ids = sorted(self.jobs)
        statuses = self.engine.statuses(ids)
        for job_id, status in zip(ids, statuses, strict=True):
            j = self.jobs[job_id]
            r = self.engine.get(job_id)
            assert r.status == status == j.status, (job_id, r.status, j.status)
            assert (r.attempt, r.failures, r.crashes) == (j.attempt, j.failures, j.crashes), job_id
            assert r.cancel_requested == j.cancel_requested, job_id
            assert r.replayed_from == j.replayed_from
            if status in ("pending", "scheduled"):
                assert r.eta_ms == j.eta_ms, job_id
            if status == "running":
                assert r.lease_owner == j.lease_owner and r.lease_owner in OWNERS
                assert r.lease_deadline_ms == j.lease_deadline_ms is not None
            else:
                assert (r.lease_owner, r.lease_deadline_ms) == (None, None), job_id
            assert r.attempt >= self.seen_attempts.get(job_id, 0), "attempt never decreases"
            self.seen_attempts[job_id] = r.attempt
            if job_id in self.seen_terminal:
                assert status == self.seen_terminal[job_id], "a terminal state never changes"
            if status in TERMINAL:
                self.seen_terminal[job_id] = status
                assert r.finished_ms is not None

    @invariant()
    def stats_count_every_job_once(self) -> None:
        stats = self.engine.stats()
        assert sum(stats.values()) == len(self.jobs)
        for status, count in stats.items():
            assert count == sum(1 for j in self.jobs.values() if j.status == status), status

    @invariant()
    def stale_outcomes_are_all_recorded(self) -> None:
        assert len(self.engine.stale_outcomes(limit=100_000)) == self.stale_count

    @invariant()
    def next_wakeup_matches(self) -> None:
        times = [j.eta_ms for j in self.jobs.values() if j.status == "scheduled"]
        times += [
            j.lease_deadline_ms for j in self.jobs.values() if j.status == "running" and j.lease_deadline_ms
        ]
        assert self.engine.next_wakeup_ms() == (min(times) if times else None)


EngineMachine.TestCase.settings = settings(
    max_examples=50,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestEngineStateful = EngineMachine.TestCase


class PostgresEngineMachine(EngineMachine):
    """The same model and rules over the PostgreSQL storage, in a fresh schema."""

    def open_engine(self) -> Engine:
        self._schema = pg_schema()
        return Engine(self._schema.__enter__(), clock_ms=T0)

    def teardown(self) -> None:
        super().teardown()
        self._schema.__exit__(None, None, None)


# Each example opens a new schema (DDL, slow on a loaded machine), so the
# PostgreSQL run takes fewer examples than the SQLite one and its own time
# limit, which only turns a hang into a failure.
PostgresEngineMachine.TestCase.settings = settings(
    max_examples=8,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestEngineStatefulPostgres = PostgresEngineMachine.TestCase
TestEngineStatefulPostgres.pytestmark = [pytest.mark.timeout(900)]
