"""What one turn of the supervisor's storage costs per job, by the number of
jobs it stores: ``Engine.complete_and_claim`` with k outcomes and a claim of
k more, on a fresh SQLite database, as the supervisor calls it.

Most of the cost of a commit that holds one job is fixed (its WAL frames,
locks and system calls) and shared by every job it holds, so the cost per job
falls as more jobs share a commit; that is why short jobs are sent several
ahead per worker (see ``docs/performance.md``).

    .venv/bin/python benches/commit_cost.py [--jobs 20000] [--sizes 1,2,4,8,16]

Prints, for each k, the median over ``--reps`` runs of microseconds per job
and per call. Each run stores ``--jobs`` outcomes in turns of k.
"""

from __future__ import annotations

import argparse
import pickle
import statistics
import tempfile
import time
from pathlib import Path

from stoker._core import Engine, NewJob

OWNER = "bench-commit-cost"
LEASE_MS = 30_000
#: What a worker reports with each outcome, as the supervisor stores it.
USAGE = (
    '{"wall_s": 2.1e-05, "cpu_user_s": 2e-05, "cpu_system_s": 0.0, "peak_rss_kib": 20480, '
    '"worker_pid": 12345, "worker": "bench-commit-cost/12345"}'
)


def microseconds_per_job(jobs: int, batch: int) -> float:
    """Run ``jobs`` completions in turns of ``batch``, each with a claim of ``batch`` more."""
    with tempfile.TemporaryDirectory(prefix="stoker-commit-") as directory:
        engine = Engine(str(Path(directory) / "cost.db"))
        payload = pickle.dumps(((), {}))
        result = pickle.dumps(None)
        engine.enqueue_payloads(NewJob("noop", payload), [payload] * (jobs + batch))
        running = engine.claim(["default"], batch, OWNER, LEASE_MS)
        turns = jobs // batch
        started = time.perf_counter()
        for _ in range(turns):
            outcomes = [(job.id, job.token, result, USAGE) for job in running]
            _, running = engine.complete_and_claim(outcomes, ["default"], batch, OWNER, LEASE_MS)
        elapsed = time.perf_counter() - started
        return elapsed / (turns * batch) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--sizes", default="1,2,4,8,16")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    print("jobs per commit | µs per job | µs per call")
    for batch in [int(size) for size in args.sizes.split(",")]:
        per_job = statistics.median(microseconds_per_job(args.jobs, batch) for _ in range(args.reps))
        print(f"{batch:15d} | {per_job:10.1f} | {per_job * batch:11.1f}")


if __name__ == "__main__":
    main()
