"""``stoker info``, ``jobs``, ``show``, ``errors`` and ``dead`` (``stoker.cli.inspect``): what they show."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest

import stoker
from apps import tasks as app
from cli.running import APP, Run, run_all, run_json, stored_job
from conftest import wait_until
from stoker._base import serialization
from stoker.cli import (
    EXIT_OK,
    main,
)

# --- info, jobs ---------------------------------------------------------------


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
        "expired": "0",
        "waiting": "0",
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


def _expired_job(queue: stoker.Queue) -> stoker.Job:
    """A job whose expiry passed before it could run: it ends expired without running."""
    job = queue.get_task("add").options(expires=0.001, delay=3600).delay(1, 2)
    wait_until(lambda: queue.engine.expire_due() or job.status == "expired", what="the expiry")
    return job


def test_info_and_jobs_show_a_job_waiting_on_a_dependency(queue: stoker.Queue, cli: Run) -> None:
    add = queue.get_task("add")
    later = add.options(delay=3600).delay(1, 1)
    waiting = add.options(depends_on=[later]).delay(2, 2)
    assert waiting.status == "waiting"

    code, out, _ = cli("info")
    assert code == EXIT_OK
    counts = {line.split()[0]: line.split()[1] for line in out.splitlines()[2:]}
    assert (counts["waiting"], counts["scheduled"], counts["total"]) == ("1", "1", "2")
    assert run_json(cli, "info")["counts"]["waiting"] == 1

    assert [j["id"] for j in run_json(cli, "jobs", "--status", "waiting")] == [waiting.id]
    code, out, _ = cli("jobs", "--status", "waiting")
    assert code == EXIT_OK
    assert [row.split()[:3] for row in out.splitlines()[1:]] == [[str(waiting.id), "waiting", "add"]]


def test_info_and_jobs_show_an_expired_job(queue: stoker.Queue, cli: Run) -> None:
    expired = _expired_job(queue)
    queue.get_task("add").delay(3, 3)

    code, out, _ = cli("info")
    assert code == EXIT_OK
    counts = {line.split()[0]: line.split()[1] for line in out.splitlines()[2:]}
    assert (counts["expired"], counts["pending"], counts["total"]) == ("1", "1", "2")
    assert run_json(cli, "info")["counts"]["expired"] == 1

    assert [j["id"] for j in run_json(cli, "jobs", "--status", "expired")] == [expired.id]
    code, out, _ = cli("jobs", "--status", "expired")
    assert code == EXIT_OK
    assert [row.split()[:3] for row in out.splitlines()[1:]] == [[str(expired.id), "expired", "add"]]


# --- show, errors -------------------------------------------------------------


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


# --- dead ---------------------------------------------------------------------


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
