"""Nothing a task raises, returns, reports or prints stops a supervisor.

An error message that UTF-8 cannot encode (a file name decoded with
``os.fsdecode``) made the engine refuse the error record, and the refusal
killed the supervisor, then the next one that ran the job again. These tests
throw such text, bytes decoded as text and hostile exception objects at the
outcome path: in this process (capture and store), through a pool, and
through ``stoker worker`` in its own process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import stoker
from apps import poison
from conftest import HANG_GUARD, TESTS, wait_until
from stoker import _core
from stoker._base import remote_errors, serialization, signing
from stoker._base.remote_errors import CapturedError, capture, fail_storably, rebuild, storable_text

#: Arbitrary text: any code point, lone surrogates and NUL included, and bytes
#: decoded as Python decodes file names (undecodable bytes become surrogates).
ANY_TEXT = st.one_of(
    st.text(st.characters(codec=None, exclude_categories=())),
    st.binary().map(lambda data: data.decode("utf-8", "surrogateescape")),
    st.binary().map(lambda data: data.decode("latin-1")),
    st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)),
)
KINDS = st.sampled_from(sorted(poison.KINDS))
KEY = b"poison-test-key"


def _raised(kind: str, text: str) -> BaseException:
    try:
        raise poison.make_hostile(kind, text)
    except BaseException as error:
        return error


def _storable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# --- in this process -------------------------------------------------------------------------


def test_escaped_text_shows_every_character_and_text_that_encodes_is_kept_as_it_is() -> None:
    assert storable_text(f"cannot parse {poison.NOT_UTF8_NAME}") == "cannot parse caf\\udce9.csv"
    # SQLite keeps NUL characters; PostgreSQL's text cannot hold them.
    assert storable_text("a\x00b") == "a\x00b"
    assert storable_text("a\x00b", keep_nul=False) == "a\\x00b"
    plain = "naïve ∑ 😀 back\\slash"
    assert storable_text(plain) is plain
    cut = storable_text("x" * 100, 60)
    assert cut == "x" * 19 + "... [100 characters, the rest not stored]" and len(cut) == 60
    assert storable_text(cut, 60) is cut


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=KINDS, text=ANY_TEXT)
def test_any_exception_is_captured_stored_and_rebuilt(kind: str, text: str) -> None:
    error = _raised(kind, text)
    captured = capture(error)
    for field in (captured.exc_type, captured.message, captured.traceback):
        assert type(field) is str and _storable(field)
    assert len(captured.message) <= remote_errors.MESSAGE_MAX_CHARS
    engine = _core.Engine(":memory:")
    (job_id,) = engine.enqueue([_core.NewJob("t", b"", max_retries=0)])
    (claimed,) = engine.claim(["default"], 1, "owner", 60_000)
    outcome = fail_storably(engine, job_id, claimed.token, "error", captured, "owner/1", True, None)
    assert outcome == "dead"
    (record,) = engine.errors(job_id)
    assert (record.exc_type, record.message, record.traceback) == (
        captured.exc_type,
        captured.message,
        captured.traceback,
    )
    rebuilt = rebuild(
        exc_type=record.exc_type,
        message=record.message,
        traceback_text=record.traceback,
        exc_pickle=record.exc_pickle,
    )
    assert isinstance(rebuilt, BaseException)
    if kind == "text":
        # The pickle keeps the message exactly, surrogates included.
        assert type(rebuilt) is ValueError and rebuilt.args == (text,)
    # Signed, it comes back the same way; its pickle, if any, is sealed.
    signed = capture(error, lambda data: signing.seal(KEY, data))
    assert (signed.exc_pickle is None) == (captured.exc_pickle is None)
    again = rebuild(
        exc_type=signed.exc_type,
        message=signed.message,
        traceback_text=signed.traceback,
        exc_pickle=signed.exc_pickle,
        job_id=job_id,
        attempt=1,
        unseal=lambda data, **where: signing.unseal(KEY, data, **where),
    )
    assert type(again) is type(rebuilt)


@pytest.mark.parametrize(
    "sent",
    [
        CapturedError(exc_type=5, message=b"bytes", traceback=None, exc_pickle="not bytes"),  # type: ignore[arg-type]
        "not a captured error at all",
        None,
    ],
)
def test_whatever_a_worker_sends_as_its_error_is_stored(sent: object) -> None:
    engine = _core.Engine(":memory:")
    (job_id,) = engine.enqueue([_core.NewJob("t", b"", max_retries=0)])
    (claimed,) = engine.claim(["default"], 1, "owner", 60_000)
    assert fail_storably(engine, job_id, claimed.token, "error", sent, "owner/1", True, "\udce9") == "dead"
    (record,) = engine.errors(job_id)
    assert record.exc_pickle is None and record.usage is None


class _RefusingEngine:
    """An engine whose first ``fail`` refuses the record (as a limit of the database would)."""

    backend = "sqlite"

    def __init__(self, engine: _core.Engine) -> None:
        self.engine = engine
        self.refused = 0

    def fail(self, *args: Any, **kwargs: Any) -> tuple[str, int | None]:
        if not self.refused:
            self.refused += 1
            raise stoker.StorageError("string or blob too big")
        return self.engine.fail(*args, **kwargs)


def test_a_record_the_database_refuses_becomes_a_plain_one_that_says_so() -> None:
    engine = _core.Engine(":memory:")
    (job_id,) = engine.enqueue([_core.NewJob("t", b"", max_retries=0)])
    (claimed,) = engine.claim(["default"], 1, "owner", 60_000)
    captured = capture(_raised("text", f"cannot parse {poison.NOT_UTF8_NAME}"))
    refusing = _RefusingEngine(engine)
    outcome = fail_storably(refusing, job_id, claimed.token, "error", captured, "o/1", True, None)  # type: ignore[arg-type]
    assert outcome == "dead" and refusing.refused == 1
    (record,) = engine.errors(job_id)
    assert record.exc_type == "builtins.ValueError"
    assert record.message.startswith("[stoker could not store this error as it was sent")
    assert "string or blob too big" in record.message
    assert record.message.endswith("cannot parse caf\\udce9.csv")
    assert record.exc_pickle is None


def test_a_busy_database_is_not_taken_for_a_bad_record() -> None:
    class Busy:
        backend = "sqlite"

        def fail(self, *args: Any, **kwargs: Any) -> None:
            raise stoker.StorageBusyError("locked")

    with pytest.raises(stoker.StorageBusyError):
        fail_storably(Busy(), 1, 1, "error", capture(ValueError("x")), "o/1", True, None)  # type: ignore[arg-type]


def test_nul_characters_are_escaped_for_postgresql_only() -> None:
    class Recording:
        def __init__(self, backend: str) -> None:
            self.backend = backend
            self.messages: list[str] = []

        def fail(self, *args: Any, message: str, **kwargs: Any) -> tuple[str, None]:
            self.messages.append(message)
            return "dead", None

    captured = capture(ValueError("a\x00b"))
    for backend, stored in (("sqlite", "a\x00b"), ("postgresql", "a\\x00b")):
        engine = Recording(backend)
        fail_storably(engine, 1, 1, "error", captured, "o/1", True, None)  # type: ignore[arg-type]
        assert engine.messages == [stored]


def test_a_result_over_the_stored_size_fails_in_the_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Test mode runs the worker's code in this process, so the limit applies there.
    monkeypatch.setattr(serialization, "STORED_VALUE_MAX_BYTES", 1000)
    queue = stoker.Queue(tmp_path / "jobs.db")
    queue.include(poison.queue)
    with queue.test_mode():
        job = queue.get_task("poison.return_bytes").delay(5000)
        with pytest.raises(stoker.SerializationError, match=r"bytes pickled, more than the 1000 bytes"):
            job.result()
        assert queue.get_task("poison.return_bytes").delay(10).result() == b"r" * 10


def test_test_mode_stores_an_error_utf8_cannot_encode(tmp_path: Path) -> None:
    queue = stoker.Queue(tmp_path / "jobs.db")
    queue.include(poison.queue)
    with queue.test_mode():
        job = queue.get_task("poison.cannot_parse").delay()
        with pytest.raises(ValueError) as raised:
            job.result()
    assert str(raised.value) == f"cannot parse {poison.NOT_UTF8_NAME}"
    assert [e.message for e in job.errors] == ["cannot parse caf\\udce9.csv"]


# --- through worker processes ----------------------------------------------------------------


def _task(queue: stoker.Queue, name: str) -> stoker.Task[Any, Any]:
    return queue.get_task(f"poison.{name}")


def _one_outcome(job: stoker.Job) -> str:
    """The job's final status, after checking that it has exactly one stored outcome."""
    status = job.wait(HANG_GUARD)
    errors = job.errors
    if status == "complete":
        assert errors == []
    else:
        assert status == "dead"
        assert [e.kind for e in errors] == ["error"], [(e.kind, e.message[:200]) for e in errors]
    return status


def test_an_error_message_utf8_cannot_encode_is_stored_and_the_pool_goes_on(
    pqueue: stoker.Queue, ppool: stoker.SupervisorThread
) -> None:
    job = _task(pqueue, "cannot_parse").delay()
    innocent = _task(pqueue, "echo").delay("next")
    with pytest.raises(ValueError) as raised:
        job.result(timeout=HANG_GUARD)
    assert str(raised.value) == f"cannot parse {poison.NOT_UTF8_NAME}"
    assert _one_outcome(job) == "dead"
    assert job.errors[0].message == "cannot parse caf\\udce9.csv"
    assert "caf\\udce9.csv" in job.errors[0].traceback
    assert innocent.result(timeout=HANG_GUARD) == "next"
    assert ppool.is_alive() and ppool.error is None


def test_stoker_worker_survives_an_error_message_utf8_cannot_encode(pqueue: stoker.Queue) -> None:
    job = _task(pqueue, "cannot_parse").delay()
    innocent = _task(pqueue, "echo").delay("beside it")
    command = [sys.executable, "-m", "stoker", "worker", "apps.poison:queue", "-p", "1", "--until-idle"]
    env = dict(
        os.environ,
        STOKER_TEST_DB=str(pqueue.path),
        PYTHONPATH=os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])),
    )
    finished = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=HANG_GUARD, check=False
    )
    assert finished.returncode == 0, finished.stderr
    assert "UnicodeEncodeError" not in finished.stderr
    assert _one_outcome(job) == "dead"
    assert job.errors[0].message == "cannot parse caf\\udce9.csv"
    assert innocent.result(timeout=HANG_GUARD) == "beside it"
    shown = subprocess.run(
        [sys.executable, "-m", "stoker", "show", "apps.poison:queue", str(job.id)],
        env=env,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr
    assert "builtins.ValueError: cannot parse caf\\udce9.csv" in shown.stdout


def test_every_kind_of_hostile_exception_ends_its_job_dead_with_one_record(
    pqueue: stoker.Queue, ppool: stoker.SupervisorThread
) -> None:
    text = f"cannot parse {poison.NOT_UTF8_NAME}\x00"
    jobs = {kind: _task(pqueue, "raise_hostile").delay(kind, text) for kind in sorted(poison.KINDS)}
    for kind, job in jobs.items():
        assert _one_outcome(job) == "dead", kind
        (error,) = job.errors
        for field in (error.type_name, error.message, error.traceback):
            assert _storable(field), (kind, field[:200])
    assert _task(pqueue, "echo").delay(1).result(timeout=HANG_GUARD) == 1
    assert ppool.is_alive() and ppool.error is None


def test_a_pool_survives_hostile_errors_results_progress_and_prints(
    pqueue: stoker.Queue, ppool: stoker.SupervisorThread
) -> None:
    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        what=st.one_of(
            st.tuples(st.just("raise_hostile"), KINDS),
            st.tuples(st.sampled_from(["print_and_return", "progress"]), st.none()),
        ),
        text=ANY_TEXT,
    )
    def check(what: tuple[str, str | None], text: str) -> None:
        name, kind = what
        args = (kind, text) if kind is not None else (text,)
        job = _task(pqueue, name).delay(*args)
        status = _one_outcome(job)
        if name == "raise_hostile":
            assert status == "dead"
            assert isinstance(job.outcome().error, BaseException)
        elif name == "progress":
            assert status == "complete" and job.result() == text
        # The supervisor is still serving the next job.
        assert _task(pqueue, "echo").delay(1).result(timeout=HANG_GUARD) == 1
        assert ppool.is_alive() and ppool.error is None

    check()


def test_a_worker_message_of_the_wrong_shape_kills_that_worker_only(
    pqueue: stoker.Queue, ppool: stoker.SupervisorThread
) -> None:
    job = _task(pqueue, "bad_message").delay()
    assert job.wait(HANG_GUARD) == "dead"
    assert [e.kind for e in job.errors] == ["crash"]
    with pytest.raises(stoker.WorkerLostError, match="was killed by SIGKILL"):
        job.result()
    assert _task(pqueue, "echo").delay(1).result(timeout=HANG_GUARD) == 1
    assert ppool.is_alive() and ppool.error is None


def test_a_result_over_the_stored_size_fails_its_attempt_and_the_pool_goes_on(
    pqueue: stoker.Queue, ppool: stoker.SupervisorThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The supervisor's check (this process); the worker's own check keeps the real limit.
    monkeypatch.setattr(serialization, "STORED_VALUE_MAX_BYTES", 1000)
    job = _task(pqueue, "return_bytes").delay(5000)
    with pytest.raises(stoker.SerializationError, match=r"could not be stored: it is \d+ bytes"):
        job.result(timeout=HANG_GUARD)
    assert _one_outcome(job) == "dead"
    assert _task(pqueue, "return_bytes").delay(10).result(timeout=HANG_GUARD) == b"r" * 10


def test_a_schedule_source_whose_error_utf8_cannot_encode_skips_the_fire_and_the_pool_goes_on(
    pqueue: stoker.Queue, ppool: stoker.SupervisorThread
) -> None:
    def refuse(schedule: object) -> None:
        raise ValueError(f"cannot parse {poison.NOT_UTF8_NAME}")

    def veto(schedule: object) -> None:
        raise stoker.ScheduleCancelledError(f"not today: {poison.NOT_UTF8_NAME}")

    pqueue.add_schedule_source("poison-refuses", refuse)
    pqueue.add_schedule_source("poison-vetoes", veto)
    echo = _task(pqueue, "echo")
    refused = echo.schedule_by_time(time.time(), args=(1,), source="poison-refuses")
    vetoed = echo.schedule_by_time(time.time(), args=(1,), source="poison-vetoes")
    (fire,) = wait_until(refused.fires, what="the refused fire")
    assert (fire.outcome, fire.message) == ("error", "ValueError: cannot parse caf\\udce9.csv")
    (fire,) = wait_until(vetoed.fires, what="the vetoed fire")
    assert (fire.outcome, fire.message) == ("vetoed", "not today: caf\\udce9.csv")
    assert echo.delay(2).result(timeout=HANG_GUARD) == 2
    assert ppool.is_alive() and ppool.error is None
