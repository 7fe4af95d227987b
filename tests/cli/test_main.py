"""The command as a whole: wrong usage, job ids, unforeseen errors, its own process (``stoker.cli``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import stoker
from cli.running import APP, Run, run_all, run_json, stoker_command
from stoker.cli import (
    EXIT_DEAD,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    main,
)


@pytest.mark.parametrize("command", ["show", "errors", "replay", "cancel", "wait"])
def test_a_missing_job_id_is_named(cli: Run, command: str) -> None:
    code, out, err = cli(command, "4242")
    assert code == EXIT_FAILED
    assert out == ""
    assert err.strip() == "stoker: JobNotFoundError: no job with id 4242"
    assert run_json(cli, command, "4242", expect=EXIT_FAILED) == {
        "error": {"type": "JobNotFoundError", "message": "no job with id 4242"}
    }


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
