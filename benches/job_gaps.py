"""The time a worker spends between two CPU-bound jobs, stoker against ProcessPoolExecutor.

Each task spins for about 20 ms of pure Python and returns its worker's pid
and the moments it started and ended its loop, on ``CLOCK_MONOTONIC``, which
every process of the machine shares. For each worker, the gap between two
jobs is the next job's start less the previous job's end: everything the
worker did between two loops (report the outcome, receive the next job) and
any time it waited for a core or for its next job. The CPU-bound scenario of
``benches/run.py`` loses its efficiency in these gaps, since a task's own
time includes any preemption while it spins.

    .venv/bin/python benches/job_gaps.py [--n 200] [--reps 3]

Each trial runs in a fresh process with a fresh database, the systems
alternating; the pool has 2 workers, the caller sends every task first and
then collects the results in order.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import bench_tasks_plain as plain
from trial import PROCESSES, _calibrate_spin

import stoker

TASK_SECONDS = 0.02

queue = stoker.Queue(os.environ.get("BENCH_DB", "bench-gaps.db"))


def timed_spin(iterations: int) -> tuple[int, float, float]:
    """Spin; return this worker's pid and when the loop started and ended."""
    start = time.monotonic()
    plain.spin(iterations)
    return os.getpid(), start, time.monotonic()


@queue.task(max_retries=0)
def stoker_timed_spin(iterations: int) -> tuple[int, float, float]:
    return timed_spin(iterations)


def _run_stoker(n: int, iterations: int) -> list[tuple[int, float, float]]:
    pool = queue.start_worker(processes=PROCESSES, drain_timeout=2)
    try:
        if not pool.wait_started(60) or pool.error is not None:
            raise RuntimeError(f"stoker workers did not start: {pool.error!r}")
        stoker_timed_spin.delay(10).result(timeout=60)
        jobs = [stoker_timed_spin.delay(iterations) for _ in range(n)]
        return [job.result(timeout=120) for job in jobs]
    finally:
        pool.stop(timeout=10)


def _run_ppe(n: int, iterations: int) -> list[tuple[int, float, float]]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(PROCESSES, mp_context=multiprocessing.get_context("forkserver")) as executor:
        for future in [executor.submit(timed_spin, 10) for _ in range(4 * PROCESSES)]:
            future.result()
        futures = [executor.submit(timed_spin, iterations) for _ in range(n)]
        return [future.result() for future in futures]


def trial(system: str, n: int) -> dict[str, Any]:
    """One trial in this process: the gaps of every worker, in microseconds."""
    iterations = _calibrate_spin(TASK_SECONDS)
    runs = _run_stoker(n, iterations) if system == "stoker" else _run_ppe(n, iterations)
    by_worker: dict[int, list[tuple[float, float]]] = {}
    for pid, start, end in runs:
        by_worker.setdefault(pid, []).append((start, end))
    gaps: list[float] = []
    for spans in by_worker.values():
        spans.sort()
        gaps += [(later[0] - earlier[1]) * 1e6 for earlier, later in itertools.pairwise(spans)]
    gaps.sort()
    return {
        "system": system,
        "mean_us": statistics.mean(gaps),
        "p50_us": gaps[len(gaps) // 2],
        "p90_us": gaps[len(gaps) * 9 // 10],
        "task_ms": statistics.median(end - start for _, start, end in runs) * 1e3,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="tasks per trial")
    parser.add_argument("--reps", type=int, default=3, help="trials per system")
    parser.add_argument("--trial", choices=["stoker", "ppe"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.trial:
        # By its module name, so that the workers import the same task.
        from job_gaps import trial as run_trial

        print(json.dumps(run_trial(args.trial, args.n)), flush=True)
        os._exit(0)  # Skip interpreter shutdown: nothing is left to wait for.
    results: dict[str, list[dict[str, Any]]] = {"stoker": [], "ppe": []}
    for rep in range(args.reps):
        for system in ("stoker", "ppe") if rep % 2 == 0 else ("ppe", "stoker"):
            with tempfile.TemporaryDirectory() as scratch:
                env = {**os.environ, "BENCH_DB": os.path.join(scratch, "gaps.db")}
                env["PYTHONPATH"] = os.pathsep.join(
                    filter(None, [os.path.dirname(__file__), env.get("PYTHONPATH")])
                )
                done = subprocess.run(
                    [sys.executable, __file__, "--trial", system, "--n", str(args.n)],
                    cwd=scratch,
                    env=env,
                    capture_output=True,
                    text=True,
                    check=True,
                )
            results[system].append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(
        f"gaps between two jobs of a worker, {args.n} tasks of about 20 ms, 2 workers; median of {args.reps}"
    )
    print("| system | mean | p50 | p90 | task |")
    print("|---|---:|---:|---:|---:|")
    names = {"stoker": "stoker", "ppe": "ProcessPoolExecutor"}
    for system, trials in results.items():
        mean, p50, p90, task = (
            statistics.median(t[key] for t in trials) for key in ("mean_us", "p50_us", "p90_us", "task_ms")
        )
        print(f"| {names[system]} | {mean:.0f} µs | {p50:.0f} µs | {p90:.0f} µs | {task:.1f} ms |")


if __name__ == "__main__":
    main()
