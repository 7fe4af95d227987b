"""What waiting for a result costs: from the commit of a job's outcome to the
result in the caller's hands.

A middleware's ``post_save`` (run by the supervisor right after the commit)
logs the time each outcome was stored, to the microsecond; the caller notes
the time each ``result()`` returned. Both clocks are the machine's wall clock.
One job at a time through a warm idle pool of 2 workers, with the pool in the
caller's process (its supervisor wakes the waiter) and in a separate
``stoker worker`` process (the waiter polls SQLite's change counter).

    .venv/bin/python benches/wait_cost.py [--n 300] [--write]

``--write`` rewrites ``docs/wait-cost.md``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCHES = Path(__file__).resolve().parent
ROOT = BENCHES.parent
DOC = ROOT / "docs" / "wait-cost.md"


def stored_times(log: Path) -> dict[int, float]:
    times: dict[int, float] = {}
    for line in log.read_text().splitlines():
        job_id, stored = line.split()
        times[int(job_id)] = float(stored)
    return times


def measure(mode: str, n: int) -> list[float]:
    """Seconds from each outcome's commit to its result in the caller's hands."""
    directory = Path(tempfile.mkdtemp(prefix="stoker-wait-"))
    os.environ["BENCH_DB"] = str(directory / "wait.db")
    os.environ["WAIT_LOG"] = str(directory / "stored.log")
    sys.path.insert(0, str(BENCHES))
    import bench_wait_tasks as tasks

    task = tasks.noop
    received: dict[int, float] = {}
    worker: subprocess.Popen[bytes] | None = None
    handle = None
    try:
        if mode == "in-process":
            handle = tasks.queue.start_worker(processes=2, drain_timeout=0.0)
            handle.wait_started(60)
        else:
            command = [sys.executable, "-m", "stoker", "worker", "bench_wait_tasks:queue", "-p", "2"]
            worker = subprocess.Popen(command, cwd=BENCHES, env={**os.environ, "PYTHONPATH": str(BENCHES)})
        task.delay(-1).result(timeout=60)  # Warm: workers up, first job through.
        for i in range(n):
            job = task.delay(i)
            if job.result(timeout=60) != i:
                raise RuntimeError(f"job {job.id} returned the wrong value")
            received[job.id] = time.time()
    finally:
        if handle is not None:
            handle.stop(60)
        if worker is not None:
            worker.terminate()
            worker.wait(60)
    stored = stored_times(Path(os.environ["WAIT_LOG"]))
    return sorted(received[j] - stored[j] for j in received)


def percentile(values: list[float], fraction: float) -> float:
    return values[min(len(values) - 1, int(len(values) * fraction))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--write", action="store_true", help=f"rewrite {DOC.relative_to(ROOT)}")
    parser.add_argument("--mode", choices=["in-process", "stoker-worker"], default=None)
    args = parser.parse_args()
    if args.mode is not None:
        waits = measure(args.mode, args.n)
        print(" ".join(f"{w:.6f}" for w in waits))
        return 0
    rows = []
    for mode in ("in-process", "stoker-worker"):
        # Each mode in a fresh interpreter: no state carries over.
        out = subprocess.run(
            [sys.executable, __file__, "--mode", mode, "--n", str(args.n)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
        waits = sorted(float(x) for x in out)
        rows.append(
            f"| {mode} | {args.n} | {statistics.median(waits) * 1000:.3f} ms | "
            f"{percentile(waits, 0.99) * 1000:.3f} ms | {max(waits) * 1000:.3f} ms |"
        )
    table = [
        "| pool | jobs | stored to received, p50 | p99 | max |",
        "|---|---:|---:|---:|---:|",
        *rows,
    ]
    print("\n".join(table))
    if args.write:
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        DOC.write_text(
            "# What waiting for a result costs\n\n"
            + "\n\n".join(
                paragraph.replace("\n", " ").strip()
                for paragraph in (__doc__ or "").split("\n\n    .venv")[0].split("\n\n")
            )
            + " The machine was shared with other work, which shows in the tails."
            + f"\n\nRun on {stamp}:\n\n```sh\n.venv/bin/python benches/wait_cost.py --write\n```\n\n"
            + "\n".join(table)
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
