"""The compiled engine binding, ``stoker._core``, method by method.

Every test runs the engine on a manual clock (``Engine(path, clock_ms=...)``),
so delays, leases and backoff are checked exactly and nothing sleeps.
"""

from __future__ import annotations

import inspect
import os
import pickle
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from stoker import _core
from stoker._core import ClaimedJob, Engine, ErrorRecord, JobRecord, NewJob, StaleOutcome
from stoker.errors import (
    InvalidOptionError,
    JobNotFoundError,
    JobStateError,
    NotAStokerDatabaseError,
    SchemaVersionError,
    StokerError,
    StorageBusyError,
    StorageError,
)

T0 = 1_700_000_000_000
LEASE = 30_000
STATUSES = ["pending", "scheduled", "running", "complete", "dead", "cancelled", "expired", "waiting"]


@pytest.fixture
def db(tmp_path: Path) -> str:
    return str(tmp_path / "jobs.db")


@pytest.fixture
def core(database: str) -> Engine:
    """An engine on a manual clock over each backend in turn (see ``database``)."""
    return Engine(database, clock_ms=T0)


def job(priority: int = 0, **options: object) -> NewJob:
    return NewJob("tasks.work", b"payload", priority=priority, **options)  # type: ignore[arg-type]


def enqueue(core: Engine, *jobs: NewJob) -> list[int]:
    return core.enqueue(list(jobs or [job()]))


def claim_one(core: Engine, owner: str = "sup-a", queues: list[str] | None = None) -> ClaimedJob:
    claimed = core.claim(queues or ["default"], 1, owner, LEASE)
    assert len(claimed) == 1
    return claimed[0]


def fail(core: Engine, claimed: ClaimedJob, kind: str = "error", **extra: object) -> tuple[str, int | None]:
    return core.fail(
        claimed.id,
        claimed.token,
        kind=kind,
        exc_type="builtins.ValueError",
        message="boom",
        **extra,  # type: ignore[arg-type]
    )


# --- module and constructors ---------------------------------------------------


def test_module_constants() -> None:
    assert _core.__version__ == "0.1.0"
    assert (_core.SCHEMA_VERSION, _core.PG_SCHEMA_VERSION) == (5, 3)


def test_constructor_signatures_match_the_stub() -> None:
    """stubtest cannot see through PyO3's ``__new__``, so check it here."""

    def shape(obj: object) -> list[tuple[str, object, object]]:
        return [(p.name, p.kind, p.default) for p in inspect.signature(obj).parameters.values()]  # type: ignore[arg-type]

    kw = inspect.Parameter.KEYWORD_ONLY
    pos = inspect.Parameter.POSITIONAL_OR_KEYWORD
    empty = inspect.Parameter.empty
    assert shape(NewJob) == [
        ("task_name", pos, empty),
        ("payload", pos, empty),
        ("queue", kw, "default"),
        ("priority", kw, 0),
        ("max_retries", kw, 0),
        ("max_crashes", kw, 1),
        ("backoff_base_ms", kw, 1000),
        ("backoff_cap_ms", kw, 300000),
        ("jitter", kw, 0.0),
        ("timeout_ms", kw, None),
        ("delay_ms", kw, 0),
        ("eta_ms", kw, None),
        ("result_ttl_ms", kw, None),
        ("labels", kw, None),
        ("unique_key", kw, None),
        ("expires_after_ms", kw, None),
        ("depends_on", kw, None),
        ("fail_when_limited", kw, False),
    ]
    assert shape(Engine) == [("path", pos, empty), ("clock_ms", kw, None), ("busy_timeout_ms", kw, 5000)]


def test_new_job_properties_and_defaults(core: Engine) -> None:
    new = NewJob("mod.fn", b"\x00args", queue="q", priority=3)
    assert (new.task_name, new.queue, new.priority) == ("mod.fn", "q", 3)
    assert "mod.fn" in repr(new)
    [job_id] = core.enqueue([NewJob("mod.fn", b"x")])
    record = core.get(job_id)
    assert (record.queue, record.priority, record.max_retries, record.max_crashes) == ("default", 0, 0, 1)
    assert (record.backoff_base_ms, record.backoff_cap_ms, record.jitter) == (1000, 300000, 0.0)
    assert (record.timeout_ms, record.result_ttl_ms) == (None, None)


@pytest.mark.parametrize(
    ("options", "option"),
    [
        ({"task_name": ""}, "task_name"),
        ({"queue": ""}, "queue"),
        ({"max_retries": -1}, "max_retries"),
        ({"max_crashes": -1}, "max_crashes"),
        ({"delay_ms": -1}, "delay_ms"),
        ({"timeout_ms": 0}, "timeout_ms"),
        ({"timeout_ms": -5}, "timeout_ms"),
        ({"backoff_base_ms": -1}, "backoff_base_ms"),
        ({"backoff_base_ms": 10, "backoff_cap_ms": 5}, "backoff_cap_ms"),
        ({"jitter": 1.5}, "jitter"),
        ({"jitter": -0.5}, "jitter"),
        ({"delay_ms": 10, "eta_ms": T0}, "eta_ms"),
        ({"result_ttl_ms": -1}, "result_ttl_ms"),
    ],
)
def test_new_job_rejects_wrong_options_naming_them(options: dict[str, object], option: str) -> None:
    arguments: dict[str, object] = {"task_name": "t", "payload": b""}
    arguments.update(options)
    with pytest.raises(InvalidOptionError, match=option) as caught:
        NewJob(**arguments)  # type: ignore[arg-type]
    assert isinstance(caught.value, ValueError)


def test_engine_path_clock_and_repr(core: Engine, database: str) -> None:
    assert core.path == database
    assert database in repr(core)
    assert core.now_ms() == T0
    core.advance_clock(250)
    assert core.now_ms() == T0 + 250
    with pytest.raises(InvalidOptionError, match="ms"):
        core.advance_clock(-1)


def test_system_clock_cannot_be_advanced(tmp_path: Path) -> None:
    engine = Engine(str(tmp_path / "sys.db"))
    assert engine.now_ms() > T0
    with pytest.raises(InvalidOptionError, match="advance_clock"):
        engine.advance_clock(1)


def test_engine_accepts_a_path_object(tmp_path: Path) -> None:
    engine = Engine(tmp_path / "p.db", clock_ms=0)  # type: ignore[arg-type]
    assert engine.path == str(tmp_path / "p.db")


# --- enqueue and claim ---------------------------------------------------------


def test_enqueue_returns_ids_in_order_and_claim_follows_priority_then_age(core: Engine) -> None:
    ids = core.enqueue([job(0), job(5), job(0), job(9)])
    assert ids == sorted(ids)
    order = [c.id for c in core.claim(["default"], 10, "sup-a", LEASE)]
    assert order == [ids[3], ids[1], ids[0], ids[2]]
    assert core.claim(["default"], 10, "sup-a", LEASE) == []


def test_enqueue_of_a_bad_batch_stores_nothing(core: Engine) -> None:
    core.enqueue([])
    assert core.stats()["pending"] == 0


def test_claimed_job_properties(core: Engine) -> None:
    [job_id] = core.enqueue([NewJob("mod.fn", b"\x01\x02", queue="q", timeout_ms=500)])
    claimed = claim_one(core, queues=["q", "other"])
    assert isinstance(claimed, ClaimedJob)
    assert (claimed.id, claimed.token, claimed.attempt) == (job_id, 1, 1)
    assert (claimed.task_name, claimed.queue) == ("mod.fn", "q")
    assert claimed.payload == b"\x01\x02" and isinstance(claimed.payload, bytes)
    assert claimed.timeout_ms == 500
    assert claimed.lease_deadline_ms == T0 + LEASE
    assert str(job_id) in repr(claimed)


def test_claim_reads_only_the_given_queues(core: Engine) -> None:
    a, b = core.enqueue([job(queue="a"), job(queue="b", priority=1)])
    assert [c.id for c in core.claim(["b", "a"], 5, "o", LEASE)] == [b, a]
    [c] = core.enqueue([job(queue="c")])
    assert core.claim(["a", "b"], 5, "o", LEASE) == []
    assert [x.id for x in core.claim(["c"], 5, "o", LEASE)] == [c]


def test_claim_validates_its_arguments(core: Engine) -> None:
    with pytest.raises(InvalidOptionError, match="limit"):
        core.claim(["default"], -1, "o", LEASE)
    with pytest.raises(InvalidOptionError, match="lease_ms"):
        core.claim(["default"], 1, "o", 0)
    with pytest.raises(InvalidOptionError, match="owner"):
        core.claim(["default"], 1, "", LEASE)
    assert core.claim([], 5, "o", LEASE) == []


def test_delay_and_eta_are_honoured(core: Engine) -> None:
    delayed, at = core.enqueue([job(delay_ms=1000), job(eta_ms=T0 + 500)])
    assert core.statuses([delayed, at]) == ["scheduled", "scheduled"]
    assert core.next_wakeup_ms() == T0 + 500
    core.advance_clock(499)
    assert core.claim(["default"], 5, "o", LEASE) == []
    core.advance_clock(1)
    assert [c.id for c in core.claim(["default"], 5, "o", LEASE)] == [at]
    core.advance_clock(500)
    assert [c.id for c in core.claim(["default"], 5, "o", LEASE)] == [delayed]


# --- outcomes --------------------------------------------------------------------


def test_complete_stores_the_result(core: Engine) -> None:
    [job_id] = enqueue(core, job(result_ttl_ms=1000))
    claimed = claim_one(core)
    core.advance_clock(7)
    assert core.complete(job_id, claimed.token, b"result") is True
    record = core.get(job_id)
    assert (record.status, record.result, record.finished_ms) == ("complete", b"result", T0 + 7)
    assert record.result_expires_ms == T0 + 7 + 1000
    assert (record.lease_owner, record.lease_deadline_ms) == (None, None)


def test_complete_with_no_result(core: Engine) -> None:
    [job_id] = enqueue(core)
    claimed = claim_one(core)
    assert core.complete(job_id, claimed.token, None)
    assert core.get(job_id).result is None


def test_complete_many_applies_each_outcome(core: Engine) -> None:
    a, b, c = enqueue(core, job(), job(), job())
    claimed = core.claim(["default"], 3, "o", LEASE)
    tokens = {x.id: x.token for x in claimed}
    applied = core.complete_many([(a, tokens[a], b"1"), (b, tokens[b] + 1, None), (c, tokens[c], None)])
    assert applied == [True, False, True]
    assert core.statuses([a, b, c]) == ["complete", "running", "complete"]
    assert core.get(a).result == b"1"
    assert core.complete_many([]) == []


def test_stale_tokens_are_refused_and_recorded(core: Engine) -> None:
    [job_id] = enqueue(core, job(max_crashes=3))
    first = claim_one(core, "sup-a")
    assert core.requeue(job_id, first.token)
    second = claim_one(core, "sup-b")
    before = core.get(job_id)
    assert core.complete(job_id, first.token, b"late") is False
    assert fail(core, first) == ("stale", None)
    assert core.heartbeat("sup-a", [(job_id, first.token)], LEASE) == []
    assert core.requeue(job_id, first.token) is False
    assert core.finish_cancelled(job_id, first.token) is False
    after = core.get(job_id)
    assert (after.status, after.attempt, after.lease_owner, after.failures) == (
        before.status,
        before.attempt,
        before.lease_owner,
        before.failures,
    )
    assert core.errors(job_id) == []
    stale = core.stale_outcomes()
    assert all(isinstance(s, StaleOutcome) for s in stale)
    assert [s.outcome for s in stale] == ["cancel", "requeue", "heartbeat", "fail", "complete"]
    assert {(s.job_id, s.token, s.at_ms) for s in stale} == {(job_id, first.token, T0)}
    assert [s.owner for s in stale] == ["sup-b", "sup-b", "sup-a", "sup-b", "sup-b"]
    assert len(core.stale_outcomes(limit=2)) == 2
    assert "heartbeat" in repr(stale[2])
    assert core.complete(job_id, second.token, b"ok")


def test_fail_retries_with_exact_backoff_then_dies(core: Engine) -> None:
    [job_id] = enqueue(core, job(max_retries=2, backoff_base_ms=100, backoff_cap_ms=150))
    claimed = claim_one(core)
    assert fail(core, claimed, traceback="tb", exc_pickle=b"exc", worker="w1") == ("retry", T0 + 100)
    assert core.status(job_id) == "scheduled"
    core.advance_clock(99)
    assert core.claim(["default"], 1, "o", LEASE) == []
    core.advance_clock(1)
    claimed = claim_one(core)
    assert fail(core, claimed, kind="timeout") == ("retry", T0 + 100 + 150)
    core.advance_clock(150)
    claimed = claim_one(core)
    assert fail(core, claimed) == ("dead", None)
    record = core.get(job_id)
    assert (record.status, record.failures, record.crashes, record.attempt) == ("dead", 3, 0, 3)
    errors = core.errors(job_id)
    assert [e.attempt for e in errors] == [1, 2, 3]
    assert [e.kind for e in errors] == ["error", "timeout", "error"]
    first = errors[0]
    assert isinstance(first, ErrorRecord)
    assert (first.job_id, first.exc_type, first.message, first.traceback) == (
        job_id,
        "builtins.ValueError",
        "boom",
        "tb",
    )
    assert (first.exc_pickle, first.worker, first.failed_ms) == (b"exc", "w1", T0)
    assert errors[1].exc_pickle is None and errors[1].worker == "" and errors[1].traceback == ""
    assert first.id < errors[1].id < errors[2].id
    assert "ValueError" in repr(first)


def test_fail_with_jitter_stays_within_bounds(core: Engine) -> None:
    ids = core.enqueue([job(max_retries=1, backoff_base_ms=1000, jitter=0.5) for _ in range(20)])
    etas = []
    for claimed in core.claim(["default"], 20, "o", LEASE):
        outcome, eta = fail(core, claimed)
        assert outcome == "retry" and eta is not None
        etas.append(eta - T0)
    assert len(etas) == len(ids)
    assert all(500 <= delay <= 1000 for delay in etas)


def test_crash_bound_is_separate_and_non_retryable_is_dead(core: Engine) -> None:
    [crashy, fatal] = enqueue(
        core, job(1, max_retries=0, max_crashes=1, backoff_base_ms=0), job(0, max_retries=5)
    )
    claimed = claim_one(core)
    assert claimed.id == crashy
    assert fail(core, claimed, kind="crash") == ("retry", T0)
    assert core.status(crashy) == "pending"
    claimed = claim_one(core)
    assert fail(core, claimed, kind="crash") == ("dead", None)
    assert (core.get(crashy).crashes, core.get(crashy).failures) == (2, 0)
    claimed = claim_one(core)
    assert fail(core, claimed, retryable=False) == ("dead", None)
    assert core.status(fatal) == "dead"


def test_fail_rejects_an_unknown_kind(core: Engine) -> None:
    enqueue(core)
    claimed = claim_one(core)
    with pytest.raises(InvalidOptionError, match="kind"):
        fail(core, claimed, kind="meltdown")
    assert core.status(claimed.id) == "running"


def test_cancel_in_every_state(core: Engine) -> None:
    pending, scheduled, running, done = enqueue(core, job(3), job(delay_ms=10), job(2), job(1))
    assert core.cancel(pending) == "cancelled"
    claimed = {c.id: c for c in core.claim(["default"], 2, "sup-a", LEASE)}
    assert set(claimed) == {running, done}
    assert core.complete(done, claimed[done].token, None)
    assert core.cancel(scheduled) == "cancelled"
    assert core.cancel(running) == "requested"
    assert core.cancel(done) == "complete"
    assert core.cancel(pending) == "cancelled"
    assert core.get(running).cancel_requested is True
    assert core.cancel_requests("sup-a") == [(running, claimed[running].token)]
    assert core.cancel_requests("sup-b") == []
    assert core.finish_cancelled(running, claimed[running].token) is True
    assert core.statuses([pending, scheduled, running, done]) == [
        "cancelled",
        "cancelled",
        "cancelled",
        "complete",
    ]
    assert core.cancel_requests("sup-a") == []


def test_requeue_puts_a_running_job_back(core: Engine) -> None:
    [job_id] = enqueue(core)
    claimed = claim_one(core)
    assert core.requeue(job_id, claimed.token) is True
    record = core.get(job_id)
    assert (record.status, record.attempt, record.failures, record.crashes) == ("pending", 1, 0, 0)
    assert claim_one(core).token == 2


def test_heartbeat_extends_and_reports_cancel_requests(core: Engine) -> None:
    a, b = enqueue(core, job(), job())
    claimed = {c.id: c for c in core.claim(["default"], 2, "sup-a", LEASE)}
    core.cancel(b)
    core.advance_clock(LEASE - 1)
    leases = [(a, claimed[a].token), (b, claimed[b].token)]
    assert core.heartbeat("sup-a", leases, LEASE) == [b]
    assert core.get(a).lease_deadline_ms == T0 + LEASE - 1 + LEASE
    core.advance_clock(LEASE)
    assert core.reap_expired() == []
    with pytest.raises(InvalidOptionError, match="lease_ms"):
        core.heartbeat("sup-a", leases, -1)


def test_reap_expired_retries_then_kills(core: Engine) -> None:
    [job_id] = enqueue(core, job(max_crashes=1, backoff_base_ms=10))
    claim_one(core, "sup-a")
    assert core.next_wakeup_ms() == T0 + LEASE
    core.advance_clock(LEASE)
    assert core.reap_expired() == []
    core.advance_clock(1)
    assert core.reap_expired(limit=10) == [(job_id, "retry")]
    [error] = core.errors(job_id)
    assert (error.kind, error.exc_type, error.worker) == (
        "lease_expired",
        "stoker.errors.LeaseExpiredError",
        "sup-a",
    )
    assert "sup-a" in error.message
    core.advance_clock(10)
    claim_one(core, "sup-b")
    core.advance_clock(LEASE + 1)
    assert core.reap_expired() == [(job_id, "dead")]
    with pytest.raises(InvalidOptionError, match="limit"):
        core.reap_expired(-1)


# --- reads -------------------------------------------------------------------------


def test_get_returns_every_field(core: Engine) -> None:
    [job_id] = core.enqueue(
        [
            NewJob(
                "mod.fn",
                b"p",
                queue="q",
                priority=2,
                max_retries=3,
                max_crashes=4,
                backoff_base_ms=5,
                backoff_cap_ms=6,
                jitter=0.25,
                timeout_ms=7,
                delay_ms=8,
                result_ttl_ms=9,
            )
        ]
    )
    record = core.get(job_id)
    assert isinstance(record, JobRecord)
    assert (record.id, record.task_name, record.queue, record.priority) == (job_id, "mod.fn", "q", 2)
    assert (record.status, record.payload, record.attempt, record.failures, record.crashes) == (
        "scheduled",
        b"p",
        0,
        0,
        0,
    )
    assert (record.max_retries, record.max_crashes, record.backoff_base_ms, record.backoff_cap_ms) == (
        3,
        4,
        5,
        6,
    )
    assert (record.jitter, record.timeout_ms, record.result_ttl_ms) == (0.25, 7, 9)
    assert (record.created_ms, record.eta_ms, record.started_ms, record.finished_ms) == (
        T0,
        T0 + 8,
        None,
        None,
    )
    assert (record.lease_owner, record.lease_deadline_ms, record.cancel_requested) == (None, None, False)
    assert (record.result, record.result_expires_ms, record.replayed_from) == (None, None, None)
    assert "mod.fn" in repr(record)
    core.advance_clock(8)
    claim_one(core, "sup-z", queues=["q"])
    running = core.get(job_id)
    assert (running.status, running.started_ms, running.lease_owner) == ("running", T0 + 8, "sup-z")
    assert running.lease_deadline_ms == T0 + 8 + LEASE


def test_status_statuses_and_stats(core: Engine) -> None:
    assert core.stats() == dict.fromkeys(STATUSES, 0)
    assert list(core.stats()) == STATUSES
    a, b, c = enqueue(core, job(2), job(1), job(delay_ms=5))
    claimed = claim_one(core)
    assert core.status(a) == "running"
    assert core.statuses([c, b, a]) == ["scheduled", "pending", "running"]
    assert core.statuses([]) == []
    core.complete(a, claimed.token, None)
    assert core.stats() == {
        "pending": 1,
        "scheduled": 1,
        "running": 0,
        "complete": 1,
        "dead": 0,
        "cancelled": 0,
        "expired": 0,
        "waiting": 0,
    }


def test_dead_letters_and_replay(core: Engine) -> None:
    ids = enqueue(core, job(3, timeout_ms=99, result_ttl_ms=5), job(2), job(1))
    for _ in ids:
        fail(core, claim_one(core), retryable=False)
        core.advance_clock(1)
    dead = core.dead_letters()
    assert [r.id for r in dead] == list(reversed(ids))
    assert [r.id for r in core.dead_letters(limit=1, offset=1)] == [ids[1]]
    assert core.dead_letters(offset=5) == []
    with pytest.raises(InvalidOptionError, match="offset"):
        core.dead_letters(offset=-1)
    new_id = core.replay(ids[0])
    new = core.get(new_id)
    assert (new.status, new.replayed_from, new.attempt, new.priority) == ("pending", ids[0], 0, 3)
    assert (new.timeout_ms, new.result_ttl_ms, new.payload, new.task_name) == (
        99,
        5,
        b"payload",
        "tasks.work",
    )
    with pytest.raises(JobStateError) as caught:
        core.replay(new_id)
    assert (caught.value.job_id, caught.value.status, caught.value.operation) == (new_id, "pending", "replay")


def test_next_wakeup_data_version_and_purge(core: Engine, database: str) -> None:
    assert core.next_wakeup_ms() is None
    other = Engine(database, clock_ms=T0)
    version = core.data_version()
    if core.backend == "sqlite":
        # PostgreSQL's version also moves for commits elsewhere in the cluster.
        assert core.data_version() == version
    [job_id] = other.enqueue([job(result_ttl_ms=100)])
    assert core.data_version() != version
    claimed = claim_one(core)
    core.complete(job_id, claimed.token, b"r")
    assert core.purge_expired_results() == 0
    core.advance_clock(100)
    assert core.purge_expired_results(limit=0) == 0
    assert core.purge_expired_results(limit=10) == 1
    assert core.get(job_id).result is None
    assert core.get(job_id).status == "complete"


def test_engine_is_shared_between_threads(core: Engine) -> None:
    claimed: list[int] = []
    lock = threading.Lock()

    def work(n: int) -> None:
        core.enqueue([job() for _ in range(25)])
        for c in core.claim(["default"], 25, f"sup-{n}", LEASE):
            assert core.complete(c.id, c.token, None)
            with lock:
                claimed.append(c.id)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    leftover = core.claim(["default"], 1000, "sweeper", LEASE)
    assert len(claimed) + len(leftover) == 100
    assert len(set(claimed)) == len(claimed), "no job was claimed twice"


# --- errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda e: e.get(999),
        lambda e: e.status(999),
        lambda e: e.statuses([999]),
        lambda e: e.errors(999),
        lambda e: e.cancel(999),
        lambda e: e.replay(999),
        lambda e: e.complete(999, 1, None),
        lambda e: e.requeue(999, 1),
        lambda e: e.finish_cancelled(999, 1),
        lambda e: e.fail(999, 1, kind="error", exc_type="x", message="y"),
    ],
)
def test_missing_jobs_raise_job_not_found(core: Engine, call: object) -> None:
    with pytest.raises(JobNotFoundError) as caught:
        call(core)  # type: ignore[operator]
    assert caught.value.job_id == 999
    assert isinstance(caught.value, KeyError) and isinstance(caught.value, StokerError)
    assert pickle.loads(pickle.dumps(caught.value)).job_id == 999


def test_random_bytes_are_not_a_stoker_database(tmp_path: Path) -> None:
    path = tmp_path / "noise.db"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(NotAStokerDatabaseError) as caught:
        Engine(str(path), clock_ms=0)
    assert caught.value.path == str(path)
    assert "not an SQLite database" in caught.value.reason
    assert isinstance(caught.value, StorageError)


def test_a_foreign_sqlite_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "foreign.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY)")
    conn.close()
    with pytest.raises(NotAStokerDatabaseError, match="invoices") as caught:
        Engine(str(path), clock_ms=0)
    assert "application_id" in caught.value.reason


def test_another_schema_version_is_refused(db: str) -> None:
    Engine(db, clock_ms=0)
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA user_version = 42")
    conn.close()
    with pytest.raises(SchemaVersionError) as caught:
        Engine(db, clock_ms=0)
    assert (caught.value.path, caught.value.found, caught.value.expected) == (db, 42, _core.SCHEMA_VERSION)


def test_a_missing_directory_is_a_storage_error(tmp_path: Path) -> None:
    path = str(tmp_path / "missing" / "jobs.db")
    with pytest.raises(StorageError, match="missing") as caught:
        Engine(path, clock_ms=0)
    assert not isinstance(caught.value, NotAStokerDatabaseError)
    with pytest.raises(InvalidOptionError, match="busy_timeout_ms"):
        Engine(str(tmp_path / "x.db"), busy_timeout_ms=-1)


def test_a_held_write_lock_raises_storage_busy(db: str) -> None:
    # The lock is held by another process: two SQLite libraries in one process
    # (Python's and the engine's) do not see each other's POSIX locks.
    Engine(db, clock_ms=0)
    holder_code = (
        "import sqlite3, sys\n"
        "conn = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "conn.execute('BEGIN IMMEDIATE')\n"
        "print('locked', flush=True)\n"
        "sys.stdin.read()\n"
        "conn.execute('ROLLBACK')\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", holder_code, db], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        engine = Engine(db, clock_ms=0, busy_timeout_ms=0)
        with pytest.raises(StorageBusyError, match="locked") as caught:
            engine.enqueue([job()])
        assert isinstance(caught.value, StorageError)
        assert engine.stats()["pending"] == 0, "reads go on while another process writes"
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=60)
        if holder.stdout is not None:
            holder.stdout.close()
    assert engine.enqueue([job()])


def test_labels_progress_and_usage_round_trip(core: Engine) -> None:
    (job_id,) = enqueue(core, job(labels='{"run": 1}'))
    claimed = claim_one(core)
    assert claimed.labels == '{"run": 1}'
    assert core.set_progress(job_id, claimed.token, "[1, 4, null]") is True
    assert core.get(job_id).progress == "[1, 4, null]"
    assert core.set_progress(job_id, claimed.token + 1, "[2, 4, null]") is False
    assert core.complete(job_id, claimed.token, b"r", usage='{"wall_s": 1}') is True
    record = core.get(job_id)
    assert (record.labels, record.usage) == ('{"run": 1}', '{"wall_s": 1}')
    (other,) = enqueue(core, job())
    claimed = claim_one(core)
    assert core.complete_many([(other, claimed.token, None, '{"wall_s": 2}')]) == [True]
    assert core.get(other).usage == '{"wall_s": 2}'
    with pytest.raises(TypeError, match="length 2"):
        core.complete_many([(other, claimed.token)])  # type: ignore[list-item]


def test_complete_and_claim_completes_first_then_claims(core: Engine) -> None:
    # With a concurrency limit of 1, the claim can only take the second job
    # because the completion before it in the same transaction freed the slot.
    core.set_limits("task", "tasks.work", concurrency=1)
    first, second, third = enqueue(core, job(), job(), job())
    running = claim_one(core)
    assert running.id == first
    applied, claimed = core.complete_and_claim(
        [(first, running.token, b"r", '{"wall_s": 0}'), (third, 99, None)], ["default"], 5, "sup-a", LEASE
    )
    assert applied == [True, False]
    assert [c.id for c in claimed] == [second]
    assert core.statuses([first, second, third]) == ["complete", "running", "pending"]
    assert core.get(first).result == b"r"
    assert [s.job_id for s in core.stale_outcomes(10)] == [third]
    # Nothing to complete and nothing runnable: both lists come back empty.
    assert core.complete_and_claim([], ["other"], 1, "sup-a", LEASE) == ([], [])


def test_release_takes_a_claim_back(core: Engine) -> None:
    (job_id,) = enqueue(core, job())
    claimed = claim_one(core)
    assert core.release(job_id, claimed.token) is True
    record = core.get(job_id)
    assert (record.status, record.attempt, record.lease_owner) == ("pending", 0, None)
    assert core.release(job_id, claimed.token) is False
    assert core.stale_outcomes(1)[0].outcome == "release"


def test_complete_and_claim_checks_its_claim_arguments(core: Engine) -> None:
    with pytest.raises(InvalidOptionError, match="limit"):
        core.complete_and_claim([], ["default"], -1, "sup-a", LEASE)
    with pytest.raises(InvalidOptionError, match="empty name"):
        core.complete_and_claim([], [""], 1, "sup-a", LEASE)


def test_failure_usage_is_kept_in_the_error_history(core: Engine) -> None:
    (job_id,) = enqueue(core, job())
    claimed = claim_one(core)
    fail(core, claimed, usage='{"cpu_user_s": 0.25}')
    assert core.errors(job_id)[0].usage == '{"cpu_user_s": 0.25}'


def test_list_jobs_filters_and_names_a_wrong_status(core: Engine) -> None:
    first, second = enqueue(core, job(), NewJob("other", b"x", queue="q2"))
    assert [r.id for r in core.list_jobs()] == [second, first]
    assert [r.id for r in core.list_jobs(task_name="other")] == [second]
    assert [r.id for r in core.list_jobs(queue="q2", status="pending")] == [second]
    assert core.list_jobs(status="complete") == []
    with pytest.raises(InvalidOptionError, match="status must be one of"):
        core.list_jobs(status="finished")


def test_purge_jobs_takes_finished_jobs_only(core: Engine) -> None:
    done, waiting = enqueue(core, job(), job())
    claimed = claim_one(core)
    assert claimed.id == done
    core.complete(done, claimed.token, None)
    with pytest.raises(InvalidOptionError, match="pending"):
        core.purge_jobs(["pending"])
    assert core.purge_jobs(["complete"], older_than_ms=60_000) == 0
    core.advance_clock(60_001)
    assert core.purge_jobs(["complete"], older_than_ms=60_000) == 1
    with pytest.raises(JobNotFoundError):
        core.get(done)
    assert core.status(waiting) == "pending"
