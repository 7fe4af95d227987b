"""On a signed queue, no pickle from the database is loaded before its signature is checked.

A forger with write access to the database (but not the secret) plants a
pickle that runs code when it is loaded, in every place a pickle is stored:
a job's payload (in its row and in the table of large ones), a result (both
places too), the pickled exception of an error record, and a schedule's
arguments. Each is refused with a SecurityError naming the job and what was
refused, in the caller, the worker and the CLI, and the pickle never runs.

The forgery is written by another process with the stdlib sqlite3 module, as
a forger would (never by this process while its Queue has the file open).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import stoker
from apps import poison
from conftest import HANG_GUARD, TESTS, wait_until
from stoker._base.serialization import dumps

FORGE = """
import json, sqlite3, sys
path, changes = sys.argv[1], json.loads(sys.argv[2])
db = sqlite3.connect(path, timeout=30)
for sql, args in changes:
    values = [bytes.fromhex(a[4:]) if isinstance(a, str) and a.startswith("hex:") else a for a in args]
    cursor = db.execute(sql, values)
    assert cursor.rowcount == 1, (sql, args)
db.commit()
db.close()
"""


def _forge(db: Path, changes: list[tuple[str, list[object]]]) -> None:
    encoded = [
        (sql, [f"hex:{a.hex()}" if isinstance(a, bytes) else a for a in args]) for sql, args in changes
    ]
    subprocess.run(
        [sys.executable, "-c", FORGE, str(db), json.dumps(encoded)], check=True, timeout=HANG_GUARD
    )


def _cli(db: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(
        os.environ,
        STOKER_TEST_DB=str(db),
        PYTHONPATH=os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])),
    )
    return subprocess.run(
        [sys.executable, "-m", "stoker", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
        check=False,
    )


def test_a_forged_pickle_of_any_kind_is_refused_and_never_loaded(tmp_path: Path) -> None:
    db = tmp_path / "signed.db"
    queue = stoker.Queue(db, secret="poison-secret")
    queue.include(poison.signed)
    echo, fail = queue.get_task("poison.signed_echo"), queue.get_task("poison.signed_fail")
    marker = tmp_path / "unpickled"
    forged = dumps(poison.Tripwire(str(marker)))
    forged_call = dumps(((poison.Tripwire(str(marker)),), {}))

    with queue.start_worker(processes=1, drain_timeout=0.0) as handle:
        assert handle.wait_started(HANG_GUARD), handle.error
        small, large = echo.delay("small"), echo.delay("l" * 10_000)  # large: stored aside
        dead = fail.delay("the real error")
        assert [small.result(timeout=HANG_GUARD), large.result(timeout=HANG_GUARD)] == ["small", "l" * 10_000]
        with pytest.raises(ValueError, match="the real error"):
            dead.result(timeout=HANG_GUARD)
    # Sent while no supervisor runs, so they wait for the forgery.
    waiting_small, waiting_large = echo.delay("w"), echo.delay("w" * 10_000)
    schedule = echo.schedule_by_time(time.time() + 3600, args=("scheduled",))

    _forge(
        db,
        [
            ("UPDATE jobs SET result = ? WHERE id = ?", [forged, small.id]),
            ("UPDATE job_results SET data = ? WHERE job_id = ?", [forged, large.id]),
            ("UPDATE errors SET exc_pickle = ? WHERE job_id = ?", [forged, dead.id]),
            ("UPDATE jobs SET payload = ? WHERE id = ?", [forged_call, waiting_small.id]),
            ("UPDATE job_payloads SET data = ? WHERE job_id = ?", [forged_call, waiting_large.id]),
            ("UPDATE schedules SET payload = ?, next_fire_ms = 0 WHERE id = ?", [forged_call, schedule.id]),
        ],
    )

    # The caller: results and error records.
    for job in (small, large):
        with pytest.raises(stoker.SecurityError, match=f"the result of job {job.id} has a missing or wrong"):
            job.result(timeout=HANG_GUARD)
        assert isinstance(job.outcome().error, stoker.SecurityError)
    refused = f"the error record of attempt 1 of job {dead.id} has a missing or wrong signature"
    with pytest.raises(stoker.SecurityError, match=refused):
        dead.result(timeout=HANG_GUARD)
    with pytest.raises(stoker.SecurityError, match=refused):
        dead.errors[0].exception()
    # The worker: payloads, and a schedule's arguments when it fires.
    with queue.start_worker(processes=1, drain_timeout=0.0) as handle:
        assert handle.wait_started(HANG_GUARD), handle.error
        for job in (waiting_small, waiting_large):
            with pytest.raises(stoker.SecurityError, match=f"the payload of job {job.id} has a missing"):
                job.result(timeout=HANG_GUARD)
        (fire,) = wait_until(lambda: [f for f in schedule.fires() if f.job_id is not None], what="the fire")
        fired = queue.get_job(fire.job_id)
        with pytest.raises(stoker.SecurityError, match=f"the payload of job {fired.id} has a missing"):
            fired.result(timeout=HANG_GUARD)
    # The CLI: arguments and results it shows.
    for job in (small, large, waiting_small):
        shown = _cli(db, "show", "apps.poison:signed", str(job.id), "--json")
        assert shown.returncode == 0, shown.stderr
        document = json.loads(shown.stdout)
        what = document["result"] if job in (small, large) else document["arguments"]
        assert what["error"].startswith("SecurityError: "), what
    assert not marker.exists()


def test_an_error_record_signed_with_the_secret_comes_back_whole(tmp_path: Path) -> None:
    queue = stoker.Queue(tmp_path / "signed.db", secret="poison-secret")
    queue.include(poison.signed)
    with queue.start_worker(processes=1, drain_timeout=0.0) as handle:
        assert handle.wait_started(HANG_GUARD), handle.error
        job = queue.get_task("poison.signed_fail").delay("signed and sound")
        with pytest.raises(ValueError, match="signed and sound") as raised:
            job.result(timeout=HANG_GUARD)
    assert type(raised.value) is ValueError
    (record,) = queue.engine.errors(job.id)
    assert record.exc_pickle is not None and record.exc_pickle.startswith(stoker._base.signing.MAGIC)
