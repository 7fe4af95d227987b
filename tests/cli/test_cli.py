"""The ``stoker`` command: inspection and management subcommands, their JSON and exit codes."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import stoker
from apps import tasks as app
from conftest import HANG_GUARD, TESTS, wait_until
from stoker._base import serialization
from stoker._core import NewJob
from stoker.cli import (
    EXIT_CANCELLED,
    EXIT_DEAD,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    main,
)

APP = "apps.tasks:queue"

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def cli(queue: stoker.Queue, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Run:
    """Run ``stoker COMMAND apps.tasks:queue ARGS...`` in this process, on the test's queue."""
    monkeypatch.setattr(app, "queue", queue)
    capsys.readouterr()

    def run(command: str, *args: str) -> tuple[int, str, str]:
        code = main([command, APP, *args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def run_json(cli: Run, command: str, *args: str, expect: int = EXIT_OK) -> Any:
    code, out, err = cli(command, *args, "--json")
    assert code == expect, err
    return json.loads(out)


def run_all(queue: stoker.Queue) -> None:
    """Run every job of the queue to its end in a pool of two worker processes.

    Only for jobs that can run now: the pool waits for the eta of a delayed one.
    """
    queue.run_worker(processes=2, until_idle=True, install_signal_handlers=False)


def stored_job(queue: stoker.Queue, payload: bytes, **options: Any) -> int:
    """Enqueue a job of the ``add`` task with a payload of our own (and labels, say)."""
    (job_id,) = queue.engine.enqueue([NewJob("add", payload, **options)])
    return job_id


# --- info, jobs ---------------------------------------------------------------------


def test_info_shows_counts_path_and_schema_version(queue: stoker.Queue, cli: Run) -> None:
    queue.get_task("add").delay(1, 2)
    queue.get_task("quota").delay("ann", 3)
    run_all(queue)
    queue.get_task("add").options(delay=3600).delay(0, 0)

    code, out, _ = cli("info")
    assert code == EXIT_OK
    assert queue.path in out
    assert f"schema version  {stoker.SCHEMA_VERSION}" in out
    lines = {line.split()[0]: line.split()[1] for line in out.splitlines()[2:]}
    assert lines == {
        "pending": "0",
        "scheduled": "1",
        "running": "0",
        "complete": "1",
        "dead": "1",
        "cancelled": "0",
        "total": "3",
    }

    document = run_json(cli, "info")
    assert document["path"] == queue.path
    assert document["schema_version"] == stoker.SCHEMA_VERSION
    assert document["backend"] == "sqlite"
    assert document["counts"] == queue.stats()
    assert document["total"] == 3
    assert run_json(cli, "stats") == document


def test_jobs_lists_newest_first_with_filters(queue: stoker.Queue, cli: Run) -> None:
    add, quota = queue.get_task("add"), queue.get_task("quota")
    adds = [add.delay(i, i) for i in range(3)]
    dead = quota.delay("bob", 1)
    run_all(queue)

    listed = run_json(cli, "jobs")
    assert [j["id"] for j in listed] == [dead.id] + [j.id for j in reversed(adds)]
    assert listed[0]["status"] == "dead" and listed[0]["task"] == "quota"
    assert {j["status"] for j in listed[1:]} == {"complete"}

    assert [j["id"] for j in run_json(cli, "jobs", "--status", "dead")] == [dead.id]
    assert [j["id"] for j in run_json(cli, "jobs", "--task", "add", "--limit", "2")] == [
        adds[2].id,
        adds[1].id,
    ]
    assert [j["id"] for j in run_json(cli, "jobs", "--task", "add", "--offset", "2")] == [adds[0].id]
    assert run_json(cli, "jobs", "--queue", "elsewhere") == []

    code, out, _ = cli("jobs", "--status", "complete")
    assert code == EXIT_OK
    header, *rows = out.splitlines()
    assert header.split()[:3] == ["ID", "STATUS", "TASK"]
    assert [row.split()[:3] for row in rows] == [[str(j.id), "complete", "add"] for j in reversed(adds)]

    code, out, _ = cli("jobs", "--status", "running")
    assert (code, out.strip()) == (EXIT_OK, "no jobs")


# --- show, errors -------------------------------------------------------------------


def test_show_gives_options_labels_arguments_progress_usage_and_result(queue: stoker.Queue, cli: Run) -> None:
    engine = queue.engine
    job_id = stored_job(
        queue,
        serialization.dumps(((2, 3), {})),
        priority=4,
        max_retries=2,
        timeout_ms=1500,
        labels=json.dumps({"team": "physics", "run": 7}),
    )
    (claimed,) = engine.claim(["default"], 1, "test-owner", 30_000)
    assert engine.set_progress(job_id, claimed.token, json.dumps({"done": 3, "of": 10}))

    running = run_json(cli, "show", str(job_id))
    assert running["status"] == "running"
    assert running["lease_owner"] == "test-owner"
    assert running["progress"] == {"done": 3, "of": 10}
    assert running["result"] is None

    usage = {"wall_s": 0.25, "cpu_user_s": 0.2, "cpu_system_s": 0.01, "peak_rss_kib": 20480}
    assert engine.complete(job_id, claimed.token, serialization.dumps(5), usage=json.dumps(usage))

    job = run_json(cli, "show", str(job_id))
    assert job["id"] == job_id
    assert (job["task"], job["queue"], job["status"], job["priority"]) == ("add", "default", "complete", 4)
    assert (job["attempts"], job["max_retries"], job["timeout_s"]) == (1, 2, 1.5)
    assert job["labels"] == {"team": "physics", "run": 7}
    assert job["arguments"]["repr"] == "(2, 3)"
    assert job["result"]["repr"] == "5"
    assert job["usage"] == usage
    assert job["errors"] == []
    for stamp in ("created_at", "started_at", "finished_at"):
        assert job[stamp].endswith("+00:00")

    code, out, _ = cli("show", str(job_id))
    assert code == EXIT_OK
    assert out.splitlines()[0] == f"job {job_id}  complete"
    fields = dict(line.strip().split(None, 1) for line in out.splitlines()[1:] if line.startswith("  "))
    assert fields["task"] == "add"
    assert fields["priority"] == "4"
    assert fields["timeout"] == "1.5 s"
    assert json.loads(fields["labels"]) == {"team": "physics", "run": 7}
    assert fields["arguments"] == "(2, 3)"
    assert fields["result"] == "5"
    for key, value in usage.items():
        assert f"{key}={value}" in fields["usage"]
    assert "errors: none" in out


def test_show_summarizes_long_arguments(queue: stoker.Queue, cli: Run) -> None:
    job = queue.get_task("record").delay("x" * 10_000, tag=list(range(1000)))
    arguments = run_json(cli, "show", str(job.id))["arguments"]
    assert len(arguments["repr"]) <= 300
    assert arguments["repr"].startswith("('xxx")
    assert "tag=[0, 1, 2" in arguments["repr"]
    assert arguments["payload_bytes"] == len(job.record().payload)


def test_show_says_when_the_arguments_cannot_be_unpickled(queue: stoker.Queue, cli: Run) -> None:
    job_id = stored_job(queue, b"not a pickle")
    code, out, _ = cli("show", str(job_id))
    assert code == EXIT_OK
    (line,) = [line for line in out.splitlines() if line.strip().startswith("arguments")]
    assert "cannot be unpickled here" in line
    assert "the payload is 12 bytes" in line
    arguments = run_json(cli, "show", str(job_id))["arguments"]
    assert arguments["repr"] is None and arguments["payload_bytes"] == 12
    assert arguments["error"]


def test_show_checks_signatures_on_a_signed_queue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    if "secret" not in inspect.signature(stoker.Queue).parameters:
        pytest.skip("this stoker does not sign payloads")
    signed = stoker.Queue(tmp_path / "signed.db", secret="s3cret")
    signed.include(app.queue)
    monkeypatch.setattr(app, "queue", signed)
    job = signed.get_task("add").delay(1, 2)
    forged = stored_job(signed, serialization.dumps(((3, 4), {})))

    assert main(["show", APP, str(job.id), "--json"]) == EXIT_OK
    assert json.loads(capsys.readouterr().out)["arguments"]["repr"] == "(1, 2)"
    assert main(["show", APP, str(forged), "--json"]) == EXIT_OK
    arguments = json.loads(capsys.readouterr().out)["arguments"]
    assert arguments["repr"] is None
    assert arguments["error"].startswith("SecurityError")


def test_show_and_errors_give_the_error_history_with_tracebacks(
    queue: stoker.Queue, cli: Run, ledger: Path
) -> None:
    job = queue.get_task("always_fails").delay(str(ledger))
    run_all(queue)
    assert job.status == "dead"

    shown = run_json(cli, "show", str(job.id))
    assert shown["status"] == "dead" and shown["attempts"] == 3
    history = run_json(cli, "errors", str(job.id))
    assert history == shown["errors"]
    assert [e["attempt"] for e in history] == [1, 2, 3]
    for error in history:
        assert error["kind"] == "error"
        assert error["type"] == "builtins.RuntimeError"
        assert error["message"] == "this always fails"
        assert "RuntimeError: this always fails" in error["traceback"]
        assert error["worker"]

    code, out, _ = cli("errors", str(job.id))
    assert code == EXIT_OK
    assert out.count("builtins.RuntimeError: this always fails") == 3
    assert "| Traceback (most recent call last):" in out
    assert "in always_fails" in out

    code, out, _ = cli("show", str(job.id))
    assert "errors: 3" in out and out.count("| Traceback") == 3

    ok = queue.get_task("add").delay(1, 1)
    code, out, _ = cli("errors", str(ok.id))
    assert (code, out.strip()) == (EXIT_OK, f"job {ok.id} has no failed attempt")


@pytest.mark.parametrize("command", ["show", "errors", "replay", "cancel", "wait"])
def test_a_missing_job_id_is_named(cli: Run, command: str) -> None:
    code, out, err = cli(command, "4242")
    assert code == EXIT_FAILED
    assert out == ""
    assert err.strip() == "stoker: JobNotFoundError: no job with id 4242"
    assert run_json(cli, command, "4242", expect=EXIT_FAILED) == {
        "error": {"type": "JobNotFoundError", "message": "no job with id 4242"}
    }


# --- dead, replay, cancel -----------------------------------------------------------------


def test_dead_lists_dead_jobs_with_their_last_error(queue: stoker.Queue, cli: Run, ledger: Path) -> None:
    quota = queue.get_task("quota").delay("carol", 5)
    fails = queue.get_task("always_fails").delay(str(ledger))
    queue.get_task("add").delay(1, 2)
    run_all(queue)

    letters = {d["id"]: d for d in run_json(cli, "dead")}
    assert set(letters) == {quota.id, fails.id}
    assert letters[quota.id]["last_error"]["type"] == "apps.tasks.QuotaError"
    assert letters[quota.id]["last_error"]["message"] == "carol is over the quota of 5"
    assert letters[fails.id]["last_error"]["attempt"] == 3

    code, out, _ = cli("dead")
    assert code == EXIT_OK
    assert "error: apps.tasks.QuotaError: carol is over the quota of 5" in out
    assert "error: builtins.RuntimeError: this always fails" in out


def test_dead_with_no_dead_job(cli: Run) -> None:
    assert cli("dead") == (EXIT_OK, "no dead jobs\n", "")
    assert run_json(cli, "dead") == []


def test_replay_sends_a_dead_job_again(queue: stoker.Queue, cli: Run) -> None:
    dead = queue.get_task("quota").delay("dan", 1)
    ok = queue.get_task("add").delay(1, 1)
    run_all(queue)

    code, out, _ = cli("replay", str(dead.id))
    assert code == EXIT_OK
    new_id = int(out.split()[-1])
    assert out.strip() == f"job {dead.id} replayed as job {new_id}"
    record = queue.get_job(new_id).record()
    assert (record.status, record.task_name, record.replayed_from) == ("pending", "quota", dead.id)

    again = run_json(cli, "replay", str(dead.id))
    assert again["id"] == dead.id and again["new_job_id"] not in (dead.id, new_id)

    code, _, err = cli("replay", str(ok.id))
    assert code == EXIT_FAILED
    assert err.strip() == f"stoker: JobStateError: cannot replay job {ok.id}: it is complete"


def test_cancel_a_waiting_job_then_again(queue: stoker.Queue, cli: Run) -> None:
    job = queue.get_task("add").options(delay=3600).delay(1, 2)
    assert cli("cancel", str(job.id)) == (EXIT_OK, f"job {job.id} cancelled\n", "")
    assert job.status == "cancelled"
    code, out, _ = cli("cancel", str(job.id))
    assert (code, out.strip()) == (EXIT_OK, f"job {job.id} is already cancelled: nothing to cancel")
    assert run_json(cli, "cancel", str(job.id)) == {"id": job.id, "outcome": "cancelled", "was": "cancelled"}


def test_cancel_a_running_job_kills_it(
    queue: stoker.Queue, cli: Run, pool: stoker.SupervisorThread, tmp_path: Path
) -> None:
    marker = tmp_path / "started"
    job = queue.get_task("wait_for_file").delay(str(marker), str(tmp_path / "never"))
    wait_until(marker.exists, what="the job to start")
    assert run_json(cli, "cancel", str(job.id)) == {"id": job.id, "outcome": "requested", "was": "running"}
    assert job.wait(HANG_GUARD) == "cancelled"


# --- purge --------------------------------------------------------------------------------


def test_purge_needs_yes_or_dry_run_and_keeps_what_it_should(queue: stoker.Queue, cli: Run) -> None:
    add = queue.get_task("add")
    done = [add.delay(i, i) for i in range(3)]
    dead = queue.get_task("quota").delay("eve", 1)
    run_all(queue)
    waiting = add.options(delay=3600).delay(0, 0)
    cancelled = add.options(delay=3600).delay(0, 1)
    cancelled.cancel()
    before = queue.stats()

    code, out, err = cli("purge")
    assert code == EXIT_USAGE
    assert "--yes" in err and out == ""
    assert queue.stats() == before

    assert run_json(cli, "purge", "--dry-run")["jobs"] == 5
    assert run_json(cli, "purge", "--dry-run", "--status", "dead")["jobs"] == 1
    assert run_json(cli, "purge", "--dry-run", "--older-than", "3600")["jobs"] == 0
    code, out, _ = cli("purge", "--dry-run", "--status", "complete", "--status", "cancelled")
    assert (code, out.strip()) == (EXIT_OK, "would purge 4 job(s) (complete, cancelled)")
    assert queue.stats() == before

    assert run_json(cli, "purge", "--yes", "--older-than", "3600")["jobs"] == 0
    code, out, _ = cli("purge", "--status", "dead", "--yes")
    assert (code, out.strip()) == (EXIT_OK, "purged 1 job(s) (dead)")
    with pytest.raises(stoker.JobNotFoundError):
        queue.get_job(dead.id)

    document = run_json(cli, "purge", "--yes")
    assert document == {
        "dry_run": False,
        "statuses": ["complete", "dead", "cancelled"],
        "older_than_s": None,
        "jobs": 4,
    }
    for job in [*done, cancelled]:
        with pytest.raises(stoker.JobNotFoundError):
            queue.get_job(job.id)
    assert queue.get_job(waiting.id).status == "scheduled"


def test_purge_refuses_unfinished_statuses(cli: Run) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["purge", APP, "--status", "pending", "--yes"])
    assert exit_info.value.code == EXIT_USAGE


# --- wait -----------------------------------------------------------------------------------


def test_wait_exit_codes_tell_the_outcome(queue: stoker.Queue, cli: Run) -> None:
    ok = queue.get_task("add").delay(2, 5)
    dead = queue.get_task("quota").delay("fay", 2)
    run_all(queue)
    cancelled = queue.get_task("add").options(delay=3600).delay(0, 0)
    cancelled.cancel()
    never = queue.get_task("add").options(delay=3600).delay(0, 1)

    assert cli("wait", str(ok.id)) == (EXIT_OK, "7\n", "")
    assert run_json(cli, "wait", str(ok.id))["result"]["repr"] == "7"

    code, out, err = cli("wait", str(dead.id))
    assert (code, out) == (EXIT_DEAD, "")
    assert "apps.tasks.QuotaError: fay is over the quota of 2" in err
    assert "| Traceback (most recent call last):" in err
    document = run_json(cli, "wait", str(dead.id), expect=EXIT_DEAD)
    assert document["status"] == "dead"
    assert document["error"]["type"] == "apps.tasks.QuotaError"

    code, out, err = cli("wait", str(cancelled.id))
    assert (code, out, err.strip()) == (EXIT_CANCELLED, "", f"job {cancelled.id} was cancelled")
    assert run_json(cli, "wait", str(cancelled.id), expect=EXIT_CANCELLED)["status"] == "cancelled"

    code, out, err = cli("wait", str(never.id), "--timeout", "0")
    assert (code, out) == (EXIT_TIMEOUT, "")
    assert f"job {never.id} did not finish" in err
    document = run_json(cli, "wait", str(never.id), "--timeout", "0", expect=EXIT_TIMEOUT)
    assert document == {"id": never.id, "status": "scheduled", "timed_out": True}


def test_wait_blocks_until_the_pool_finishes_the_job(
    queue: stoker.Queue, cli: Run, pool: stoker.SupervisorThread
) -> None:
    job = queue.get_task("async_add").delay(20, 22)
    assert cli("wait", str(job.id)) == (EXIT_OK, "42\n", "")


def test_wait_drain_until_nothing_is_left(
    queue: stoker.Queue, cli: Run, pool: stoker.SupervisorThread
) -> None:
    add = queue.get_task("add")
    jobs = [add.delay(i, 1) for i in range(20)]
    jobs.append(queue.get_task("quota").delay("gus", 1))
    code, out, _ = cli("wait", "--drain")
    assert code == EXIT_OK
    assert all(job.done() for job in jobs)
    *progress, last = out.splitlines()
    assert progress, out
    finished, total = progress[-1].split()[1].split("/")
    assert finished == total
    assert "complete 20, dead 1, cancelled 0 in all" in last

    document = run_json(cli, "wait", "--drain")
    assert document["drained"] is True and document["timed_out"] is False
    assert document["counts"]["complete"] == 20


def test_wait_drain_times_out(queue: stoker.Queue, cli: Run) -> None:
    queue.get_task("add").options(delay=3600).delay(1, 1)
    code, out, err = cli("wait", "--drain", "--timeout", "0")
    assert code == EXIT_TIMEOUT
    assert "finished 0/1 (pending 0, scheduled 1, running 0)" in out
    assert "1 job(s) still unfinished" in err
    document = run_json(cli, "wait", "--drain", "--timeout", "0", expect=EXIT_TIMEOUT)
    assert document["timed_out"] is True and document["total"] == 1


def test_wait_drain_shows_a_progress_bar_on_a_terminal(
    queue: stoker.Queue, cli: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("rich")
    queue.get_task("add").delay(1, 1)
    run_all(queue)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    code, out, _ = cli("wait", "--drain")
    assert code == EXIT_OK
    assert "draining" in out
    assert "drained: 0 job(s) finished" in out


@pytest.mark.parametrize(
    "argv",
    [
        ["wait", APP],
        ["wait", APP, "1", "--drain"],
    ],
)
def test_wait_needs_a_job_or_drain(cli: Run, capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    assert main(argv) == EXIT_USAGE
    assert "JOB_ID or --drain" in capsys.readouterr().err


# --- usage and loading errors -------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["jobs"],
        ["show", APP],
        ["show", APP, "one"],
        ["jobs", APP, "--status", "lost"],
        ["jobs", APP, "--limit", "-1"],
        ["wait", APP, "1", "--timeout", "-1"],
        ["purge", APP, "--yes", "--dry-run"],
    ],
)
def test_wrong_usage_exits_with_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == EXIT_USAGE
    err = capsys.readouterr().err
    # One line saying what is wrong, and where the usage is.
    assert err.count("\n") == 1 and err.startswith("stoker: ")
    assert err.rstrip().endswith("--help)")


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("apps.tasks", "expected MODULE:QUEUE (like app.tasks:queue), got 'apps.tasks'"),
        ("apps.nothing_here:queue", "cannot import 'apps.nothing_here'"),
        ("apps.tasks:missing", "module 'apps.tasks' has no attribute 'missing'"),
        ("apps.tasks:add", "apps.tasks:add is a Task, not a stoker.Queue"),
    ],
)
def test_a_bad_app_reference_is_explained(
    reference: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["info", reference]) == EXIT_FAILED
    assert capsys.readouterr().err.startswith(f"stoker: {message}")


HUGE_ID = "1000000000000000000000000000000"


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["worker", APP, "--lease", "nan"], "--lease"),
        (["worker", APP, "--lease", "inf"], "--lease"),
        (["worker", APP, "--lease", "0"], "--lease"),
        (["worker", APP, "--lease", "-1"], "--lease"),
        (["worker", APP, "--lease", "1e300"], "--lease"),
        (["worker", APP, "--drain-timeout", "nan"], "--drain-timeout"),
        (["worker", APP, "--drain-timeout", "inf"], "--drain-timeout"),
        (["worker", APP, "--drain-timeout", "-1"], "--drain-timeout"),
        (["worker", APP, "--kill-grace", "nan"], "--kill-grace"),
        (["worker", APP, "--kill-grace", "-1"], "--kill-grace"),
        (["worker", APP, "-p", "0"], "-p/--processes"),
        (["worker", APP, "-p", HUGE_ID], "-p/--processes"),
        (["worker", APP, "--prefetch", "-1"], "--prefetch"),
        (["worker", APP, "--prefetch", HUGE_ID], "--prefetch"),
        (["jobs", APP, "--limit", HUGE_ID], "--limit"),
        (["dead", APP, "--offset", HUGE_ID], "--offset"),
        (["purge", APP, "--older-than", "nan", "--dry-run"], "--older-than"),
        (["purge", APP, "--older-than", "1e300", "--dry-run"], "--older-than"),
        (["wait", APP, "1", "--timeout", "nan"], "--timeout"),
        (["wait", APP, "--drain", "--timeout", "inf"], "--timeout"),
    ],
)
def test_a_numeric_option_out_of_range_is_named_in_one_line(
    argv: list[str], option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith(f"stoker: argument {option}: must be ") and err.count("\n") == 1, err


@pytest.mark.parametrize("command", ["show", "errors", "replay", "cancel", "wait"])
def test_a_job_id_beyond_64_bits_is_not_found(cli: Run, command: str) -> None:
    code, out, err = cli(command, HUGE_ID)
    assert (code, out) == (EXIT_FAILED, "")
    assert err == f"stoker: JobNotFoundError: no job with id {HUGE_ID}\n"


def _broken_module(directory: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    (directory / f"{name}.py").write_text("import stoker\n\nqueue = None\nx = 1 / 0\n")
    monkeypatch.chdir(directory)
    monkeypatch.syspath_prepend(str(directory))


def test_an_app_whose_module_raises_at_import_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _broken_module(tmp_path, monkeypatch, "broken_at_import")
    assert main(["info", "broken_at_import:queue"]) == EXIT_FAILED
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        "stoker: cannot import 'broken_at_import': ZeroDivisionError: division by zero "
        "(at broken_at_import.py, line 4) (--traceback shows the whole traceback)\n"
    )
    assert main(["info", "broken_at_import:queue", "--json"]) == EXIT_FAILED
    out, err = capsys.readouterr()
    assert json.loads(out)["error"]["message"].startswith(
        "cannot import 'broken_at_import': ZeroDivisionError"
    )


def test_traceback_shows_where_the_module_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _broken_module(tmp_path, monkeypatch, "broken_with_traceback")
    assert main(["info", "broken_with_traceback:queue", "--traceback"]) == EXIT_FAILED
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):")
    assert "x = 1 / 0" in err and "ZeroDivisionError: division by zero" in err
    assert err.splitlines()[-1] == (
        "stoker: cannot import 'broken_with_traceback': ZeroDivisionError: division by zero "
        "(at broken_with_traceback.py, line 4)"
    )


def test_an_unforeseen_error_is_one_line_too(
    cli: Run, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def fail(self: stoker.Queue) -> dict[str, int]:
        raise RuntimeError("the disk spoke in tongues")

    monkeypatch.setattr(stoker.Queue, "stats", fail)
    code, out, err = cli("info")
    assert (code, out) == (EXIT_FAILED, "")
    assert err.startswith("stoker: info failed: RuntimeError: the disk spoke in tongues (at ")
    assert err.endswith("(--traceback shows the whole traceback)\n") and err.count("\n") == 1
    code, out, err = cli("info", "--traceback")
    assert code == EXIT_FAILED
    assert err.startswith("Traceback (most recent call last):") and "in fail" in err


# --- as its own process ------------------------------------------------------------------


def python_path() -> str:
    return os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))


def stoker_command(db: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stoker", *args],
        env=dict(os.environ, STOKER_TEST_DB=str(db), PYTHONPATH=python_path()),
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
        check=False,
    )


def test_the_command_in_its_own_process(queue: stoker.Queue) -> None:
    ok = queue.get_task("add").delay(3, 4)
    dead = queue.get_task("quota").delay("hal", 9)
    run_all(queue)
    db = Path(queue.path)

    info = stoker_command(db, "info", APP, "--json")
    assert info.returncode == EXIT_OK, info.stderr
    assert json.loads(info.stdout)["counts"]["complete"] == 1

    assert stoker_command(db, "wait", APP, str(ok.id)).stdout == "7\n"
    waited = stoker_command(db, "wait", APP, str(dead.id))
    assert waited.returncode == EXIT_DEAD
    assert "apps.tasks.QuotaError: hal is over the quota of 9" in waited.stderr


def test_a_file_that_is_not_a_stoker_database(tmp_path: Path) -> None:
    db = tmp_path / "notes.db"
    db.write_text("shopping list\n")
    result = stoker_command(db, "info", APP)
    assert result.returncode == EXIT_FAILED
    assert result.stdout == ""
    assert result.stderr.strip() == (
        f"stoker: NotAStokerDatabaseError: {str(db)!r} is not a stoker database: "
        "the file is not an SQLite database"
    )


def test_the_command_names_a_module_that_raises_at_import_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "raises_here.py").write_text("import stoker\n\nraise RuntimeError('no config file')\n")
    result = subprocess.run(
        [sys.executable, "-m", "stoker", "show", "raises_here:queue", "1"],
        cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=python_path()),
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
        check=False,
    )
    assert (result.returncode, result.stdout) == (EXIT_FAILED, "")
    assert result.stderr == (
        "stoker: cannot import 'raises_here': RuntimeError: no config file "
        "(at raises_here.py, line 3) (--traceback shows the whole traceback)\n"
    )


# --- worker recycling ----------------------------------------------------------------------


def _pids_by_job(ledger: Path) -> list[int]:
    """The pid of the worker process that ran each ``record`` job, in ledger order."""
    return [int(line.split()[1]) for line in ledger.read_text().splitlines()]


@pytest.mark.parametrize(
    ("flags", "jobs_per_pid"),
    [(["--max-tasks-per-worker", "2"], 2), (["--max-worker-memory-mb", "1"], 1)],
)
def test_worker_recycles_its_processes(
    queue: stoker.Queue, ledger: Path, flags: list[str], jobs_per_pid: int
) -> None:
    # One at a time (no job ahead), so each job runs where the one before it ran
    # unless its worker process was replaced.
    jobs = [queue.get_task("record").delay(str(ledger), str(n)) for n in range(6)]
    result = stoker_command(
        Path(queue.path), "worker", APP, "-p", "1", "--prefetch", "0", "--until-idle", *flags
    )
    assert result.returncode == EXIT_OK, result.stderr
    assert [job.status for job in jobs] == ["complete"] * 6
    pids = _pids_by_job(ledger)
    assert len(pids) == 6
    # No worker process ran more than jobs_per_pid jobs: each was replaced
    # after them (which idle process takes the next job may vary).
    assert max(Counter(pids).values()) <= jobs_per_pid, pids
    assert len(set(pids)) >= 6 // jobs_per_pid, pids


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--max-tasks-per-worker", "0"],
            "argument --max-tasks-per-worker: must be a whole number >= 1, got '0'",
        ),
        (
            ["--max-tasks-per-worker", "2.5"],
            "argument --max-tasks-per-worker: must be a whole number >= 1, got '2.5'",
        ),
        (
            ["--max-worker-memory-mb", "0"],
            "argument --max-worker-memory-mb: must be a number of MiB > 0, got '0'",
        ),
        (
            ["--max-worker-memory-mb", "nan"],
            "argument --max-worker-memory-mb: must be a number of MiB > 0, got 'nan'",
        ),
        (
            ["--max-worker-memory-mb", "lots"],
            "argument --max-worker-memory-mb: must be a number of MiB > 0, got 'lots'",
        ),
    ],
)
def test_worker_recycling_flags_are_checked(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["worker", APP, *argv])
    assert exit_info.value.code == EXIT_USAGE
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"stoker: {message} (see stoker worker --help)"
