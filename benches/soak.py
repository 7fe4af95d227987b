"""Soak: loop the reliability mix for hours and check that nothing grows.

Two supervisor processes share the database: a steady one that runs for the
whole soak, and one that is SIGKILLed every few cycles and started again. Each
cycle sends a batch of counted jobs (some cancelled, some with 1 MB payloads)
and SIGKILLs a few worker processes of both while they run. Once the cycle's
jobs are finished it audits each of them against that cycle's execution ledger
(nothing lost, duplicates only for killed attempts) and then purges them, as
a deployment with a retention policy would: kept, 1 MB payloads fill any disk
in a few hours. After each cycle it samples the steady supervisor's memory
(RSS), open file descriptors and threads, the zombies below it, and the sizes
of the database file and its WAL. At the end it compares the last quarter of
the samples with the second (the first quarter is warm-up): a resource that
keeps growing fails the run.

    python benches/soak.py --hours 2          # or: make soak SOAK_HOURS=2
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("STOKER_TEST_DB", os.path.join(tempfile.mkdtemp(prefix="stoker-soak-apps-"), "apps.db"))

import psutil  # noqa: E402

import stoker  # noqa: E402
from apps import reliability as rel  # noqa: E402
from reliability.harness import Audit, SupervisorProcess, audit, signal_quietly  # noqa: E402

#: A resource may grow by this factor (plus SLACK) between the second and the last quarter.
GROWTH = 1.25
SLACK = {"rss_mb": 8.0, "fds": 4, "threads": 2, "zombies": 1, "wal_mb": 4.1, "db_mb": 16.0}


def sample(command: SupervisorProcess, db: Path) -> dict[str, float]:
    process = psutil.Process(command.pid)
    zombies = 0
    for child in process.children(recursive=True):
        try:
            zombies += child.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            pass
    wal = db.with_name(db.name + "-wal")
    return {
        "rss_mb": process.memory_info().rss / 2**20,
        "fds": process.num_fds(),
        "threads": process.num_threads(),
        "zombies": zombies,
        "wal_mb": (wal.stat().st_size if wal.exists() else 0) / 2**20,
        "db_mb": db.stat().st_size / 2**20,
    }


def flat(samples: list[dict[str, float]]) -> list[str]:
    """The resources whose last quarter grew past the second quarter."""
    if len(samples) < 8:
        return []
    quarter = len(samples) // 4
    grown = []
    for key, slack in SLACK.items():
        early = statistics.median(s[key] for s in samples[quarter : 2 * quarter])
        late = statistics.median(s[key] for s in samples[-quarter:])
        if late > early * GROWTH + slack:
            grown.append(f"{key}: {early:.1f} -> {late:.1f}")
    return grown


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hours", type=float, default=1.0)
    parser.add_argument("--batch", type=int, default=300, help="jobs sent per cycle")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    rng = random.Random(args.seed)
    workdir = Path(tempfile.mkdtemp(prefix="stoker-soak-"))
    db = workdir / "jobs.db"
    queue = stoker.Queue(db)
    queue.include(rel.queue)
    work = queue.get_task("rel.work")

    def start() -> SupervisorProcess:
        return SupervisorProcess(
            db, "-p", "2", "--lease", "2", log=workdir / f"supervisor-{time.time_ns()}.log"
        )

    steady = start()
    command = start()
    deadline = time.monotonic() + args.hours * 3600
    samples: list[dict[str, float]] = []
    total = Audit()
    cycles = worker_kills = supervisor_kills = cancels = 0
    while time.monotonic() < deadline:
        cycles += 1
        payload = b"s" * (1024 * 1024) if cycles % 5 == 0 else None
        ledger = workdir / f"ledger-{cycles}"
        jobs = work.map([(str(ledger), 0.003, payload)] * args.batch)
        for job in rng.sample(jobs, args.batch // 20):
            cancels += job.cancel() in ("cancelled", "requested")
        for _ in range(3):
            pids = command.worker_pids() + steady.worker_pids()
            if pids and signal_quietly(rng.choice(pids), signal.SIGKILL):
                worker_kills += 1
        if cycles % 10 == 0:
            command.kill()
            command.close()
            supervisor_kills += 1
            command = start()
        for job in jobs:
            job.wait(timeout=600)
        checked = audit(queue.engine, [j.id for j in jobs], ledger, allow_cancelled=True)
        total.add(checked)
        ledger.unlink(missing_ok=True)
        while queue.engine.purge_jobs(["complete", "dead", "cancelled"], limit=10_000):
            pass
        samples.append(sample(steady, db))
        if cycles % 10 == 0:
            print(json.dumps({"cycle": cycles, "jobs": total.jobs, **samples[-1]}), flush=True)
    for supervisor in (command, steady):
        supervisor.process.send_signal(signal.SIGTERM)
        supervisor.process.wait(120)
        supervisor.close()

    result = total
    grown = flat(samples)
    report = {
        "hours": args.hours,
        "cycles": cycles,
        "jobs": result.jobs,
        "worker_kills": worker_kills,
        "supervisor_kills": supervisor_kills,
        "cancels": cancels,
        "audit": result.summary(),
        "problems": result.problems[:20],
        "grown": grown,
        "first": samples[0] if samples else None,
        "last": samples[-1] if samples else None,
    }
    print(json.dumps(report, indent=2))
    return 1 if result.problems or grown else 0


if __name__ == "__main__":
    sys.exit(main())
