"""Fencing: an outcome carrying a stale token is refused and recorded, never applied."""

from __future__ import annotations

import signal
from pathlib import Path

import stoker
from conftest import wait_until
from reliability.harness import SupervisorProcess, audit


def test_a_stopped_supervisors_late_outcome_is_refused(
    rqueue: stoker.Queue, tmp_path: Path, supervisors: list[SupervisorProcess]
) -> None:
    ledger, markers, release = tmp_path / "ledger", tmp_path / "markers", tmp_path / "release"
    markers.mkdir()
    job = rqueue.get_task("rel.fenced").delay(str(ledger), str(markers), str(release))
    first = SupervisorProcess(Path(rqueue.path), "-p", "1", "--lease", "0.5")
    supervisors.append(first)
    wait_until((markers / "attempt-1").exists, what="the first attempt to start")
    first_owner = job.record().lease_owner

    # The first supervisor stops past its lease; its worker keeps running the job.
    first.process.send_signal(signal.SIGSTOP)
    second = SupervisorProcess(Path(rqueue.path), "-p", "1", "--lease", "0.5")
    supervisors.append(second)
    wait_until((markers / "attempt-2").exists, what="the second supervisor to run the job again")
    assert job.record().lease_owner != first_owner

    # Both runs finish now; only the second one's outcome may count.
    release.touch()
    wait_until(lambda: job.status == "complete", what="the second run to complete")
    assert job.result() == (2, int((markers / "attempt-2").read_text()))
    stale_before = rqueue.engine.stale_outcomes(1000)

    first.process.send_signal(signal.SIGCONT)
    wait_until(
        lambda: any(
            s.job_id == job.id and s.token == 1 and s.outcome == "complete"
            for s in rqueue.engine.stale_outcomes(1000)
        ),
        what="the first run's late completion to be refused and recorded",
    )
    # Everything the first supervisor said about the job afterwards carried token 1.
    stale_after = rqueue.engine.stale_outcomes(1000)
    refused = stale_after[: len(stale_after) - len(stale_before)]
    assert refused and all((s.job_id, s.token) == (job.id, 1) for s in refused), refused
    # Never applied: the stored result and attempt are still the second run's.
    record = job.record()
    assert (record.status, record.attempt) == ("complete", 2)
    assert job.result() == (2, int((markers / "attempt-2").read_text()))
    (error,) = job.errors
    assert (error.attempt, error.kind) == (1, "lease_expired")
    # Both runs executed (the first was presumed lost), each attempt once.
    result = audit(rqueue.engine, [job.id], ledger)
    assert result.problems == []
    assert (result.executions, result.duplicates) == (2, 1)
