"""``stoker worker``: its worker processes and their recycling flags (``stoker.cli.serve``)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

import stoker
from cli.running import APP, stoker_command
from stoker.cli import (
    EXIT_OK,
    EXIT_USAGE,
    main,
)


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
