"""PostgreSQL benchmarks: end to end, scaling, recovery and wake-up latency.

Usage (from the repository root; ``make bench`` runs it against a throwaway
server started by ``scripts/pg-server``)::

    STOKER_PG_URL=postgresql://... .venv/bin/python benches/postgres.py

Every figure comes from the jobs' own records, on the engine's clock (which
on PostgreSQL follows the server's): throughput is jobs divided by the time
from the first start to the last finish, so the start-up of the supervisor
processes is not counted.

- end to end: no-op jobs through one ``stoker worker -p 2`` on SQLite and on
  PostgreSQL;
- scaling: jobs that sleep 10 ms drained by 1, 2 and 4 supervisors (2 workers
  each), and the speed-up over one;
- recovery: from a supervisor's SIGKILL to its running jobs starting again on
  another supervisor (registration lease 5 s, renewed every second);
- wake-up latency: from the enqueue of one job to its start on an idle
  supervisor woken by NOTIFY, p50 and p99 over single jobs.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

BENCHES = Path(__file__).resolve().parent
ROOT = BENCHES.parent
PSQL_CANDIDATES = ["psql", *sorted(str(p) for p in Path("/usr/lib/postgresql").glob("*/bin/psql"))]

#: Upper bound on any wait; only turns a hang into an error.
HANG_GUARD = 300.0


def psql(url: str, sql: str) -> str:
    for binary in PSQL_CANDIDATES:
        try:
            done = subprocess.run([binary, url, "-tAc", sql], capture_output=True, text=True, check=True)
        except FileNotFoundError:
            continue
        return done.stdout.strip()
    raise RuntimeError("psql not found")


#: Extra session settings of every PostgreSQL connection (``--sync-off``).
SESSION_OPTIONS: list[str] = []


@contextmanager
def fresh_database(base_url: str | None, kind: str) -> Iterator[str]:
    """A fresh PostgreSQL schema (as a URL) or SQLite file."""
    if kind == "sqlite":
        with tempfile.TemporaryDirectory(prefix="stoker-bench-") as directory:
            yield str(Path(directory) / "bench.db")
        return
    assert base_url is not None
    schema = f"bench_{os.getpid()}_{time.monotonic_ns() % 10**9}"
    psql(base_url, f"CREATE SCHEMA {schema}")
    separator = "&" if "?" in base_url else "?"
    try:
        extra = "".join(f"%20-c%20{option.replace('=', '%3D')}" for option in SESSION_OPTIONS)
        yield f"{base_url}{separator}options=-c%20search_path%3D{schema}{extra}"
    finally:
        psql(base_url, f"DROP SCHEMA {schema} CASCADE")


def load_queue(db: str):  # type: ignore[no-untyped-def]
    os.environ["BENCH_DB"] = db
    sys.path.insert(0, str(BENCHES))
    import importlib

    import bench_tasks_pg

    return importlib.reload(bench_tasks_pg)


def start_supervisor(db: str, *extra: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, BENCH_DB=db, PYTHONPATH=str(BENCHES))
    return subprocess.Popen(
        [sys.executable, "-m", "stoker", "worker", "bench_tasks_pg:queue", *extra],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_until(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + HANG_GUARD
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.02)


def drain_rate(db: str, task: str, jobs: int, supervisors: int) -> float:
    """Jobs per second from the first start to the last finish."""
    tasks = load_queue(db)
    queue = tasks.queue
    sent = queue.get_task(f"bench_tasks_pg.{task}").map([()] * jobs)
    ids = {job.id for job in sent}
    processes = [start_supervisor(db, "-p", "2") for _ in range(supervisors)]
    try:
        wait_until(lambda: queue.stats()["complete"] >= jobs, f"{jobs} jobs")
    finally:
        stop(processes)
    records = [r for r in queue.engine.list_jobs(status="complete", limit=jobs * 2) if r.id in ids]
    first = min(r.started_ms for r in records if r.started_ms is not None)
    last = max(r.finished_ms for r in records if r.finished_ms is not None)
    return jobs / max(0.001, (last - first) / 1000)


def recovery_seconds(db: str) -> float:
    """From a supervisor's SIGKILL to its jobs starting on another supervisor."""
    tasks = load_queue(db)
    queue = tasks.queue
    engine = queue.engine
    victim = start_supervisor(db, "-p", "2")
    survivor: subprocess.Popen[bytes] | None = None
    try:
        jobs = queue.get_task("bench_tasks_pg.sleep_long").map([(3.0,)] * 2)
        wait_until(lambda: all(engine.status(j.id) == "running" for j in jobs), "both jobs to run")
        survivor = start_supervisor(db, "-p", "2")
        time.sleep(1.0)  # Let the survivor start its workers before the kill.
        killed_at = engine.now_ms()
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        wait_until(lambda: all(engine.get(j.id).attempt >= 2 for j in jobs), "the jobs to start again")
        restarts = [engine.get(j.id).started_ms or killed_at for j in jobs]
        return (max(restarts) - killed_at) / 1000
    finally:
        stop([victim] + ([survivor] if survivor else []))


def wakeup_latencies(db: str, samples: int) -> tuple[list[float], list[float]]:
    """Milliseconds to the start of single jobs sent to an idle supervisor:
    from the call that sends each, and from the moment that call returned
    (its commit), which leaves out the cost of the commit itself."""
    tasks = load_queue(db)
    queue = tasks.queue
    engine = queue.engine
    process = start_supervisor(db, "-p", "2")
    from_send: list[float] = []
    from_commit: list[float] = []
    try:
        warm = queue.get_task("bench_tasks_pg.noop").delay()
        wait_until(lambda: engine.status(warm.id) == "complete", "the warm-up job")
        for _ in range(samples):
            # Pauses spread over the backstop poll's period, so that a job found
            # by the poll rather than by its notification shows in the tail.
            time.sleep(0.05 + (time.monotonic_ns() % 200) / 1000)
            job = queue.get_task("bench_tasks_pg.noop").delay()
            committed_ms = engine.now_ms()
            job_id = job.id
            wait_until(lambda: engine.status(job_id) == "complete", "a job")  # noqa: B023 - used at once
            record = engine.get(job.id)
            assert record.started_ms is not None
            from_send.append(float(record.started_ms - record.created_ms))
            from_commit.append(float(max(0, record.started_ms - committed_ms)))
    finally:
        stop([process])
    return from_send, from_commit


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default=os.environ.get("STOKER_PG_URL"), help="PostgreSQL server URL")
    parser.add_argument("--jobs", type=int, default=5000, help="no-op jobs for the end-to-end figure")
    parser.add_argument("--sleep-jobs", type=int, default=1600, help="10 ms jobs for the scaling figure")
    parser.add_argument("--samples", type=int, default=200, help="single jobs for the wake-up latency")
    parser.add_argument(
        "--sync-off",
        action="store_true",
        help="run the PostgreSQL sessions with synchronous_commit=off (SQLite's synchronous=NORMAL class)",
    )
    parser.add_argument(
        "--only",
        choices=["e2e", "scaling", "recovery", "wakeup"],
        action="append",
        help="run only these parts",
    )
    args = parser.parse_args()
    if args.sync_off:
        SESSION_OPTIONS.append("synchronous_commit=off")
    parts = set(args.only or ["e2e", "scaling", "recovery", "wakeup"])
    if not args.url:
        sys.exit("set STOKER_PG_URL (or --url) to a PostgreSQL server; make bench starts one")

    print(f"PostgreSQL session options: {SESSION_OPTIONS or 'server defaults'}\n")
    if "e2e" in parts:
        print("## End to end: no-op jobs through one `stoker worker -p 2`\n")
        print("| storage | jobs | jobs/s |\n|---|---|---|")
        for kind in ("sqlite", "postgresql"):
            with fresh_database(args.url, kind) as db:
                print(f"| {kind} | {args.jobs} | {drain_rate(db, 'noop', args.jobs, 1):.0f} |", flush=True)

    if "scaling" in parts:
        print("\n## Scaling: jobs that sleep 10 ms, supervisors of 2 workers each (PostgreSQL)\n")
        print("| supervisors | jobs/s | speed-up |\n|---|---|---|")
        base = None
        for count in (1, 2, 4):
            with fresh_database(args.url, "postgresql") as db:
                rate = drain_rate(db, "sleep_10ms", args.sleep_jobs, count)
            base = base or rate
            print(f"| {count} | {rate:.0f} | {rate / base:.2f}x |", flush=True)

    if "recovery" in parts:
        print("\n## Recovery: SIGKILL of a supervisor to its jobs running again elsewhere\n")
        with fresh_database(args.url, "postgresql") as db:
            print(f"{recovery_seconds(db):.1f} s (registration lease 5 s, renewed every 1 s)", flush=True)

    if "wakeup" not in parts:
        return
    print("\n## Wake-up: enqueue to start of single jobs on an idle supervisor\n")
    print("| storage | from send: p50 ms | p99 ms | from commit: p50 ms | p99 ms |")
    print("|---|---|---|---|---|")
    for kind in ("postgresql", "sqlite"):
        with fresh_database(args.url, kind) as db:
            from_send, from_commit = wakeup_latencies(db, args.samples)
        print(
            f"| {kind} | {statistics.median(from_send):.1f} | {percentile(from_send, 0.99):.1f} "
            f"| {statistics.median(from_commit):.1f} | {percentile(from_commit, 0.99):.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
