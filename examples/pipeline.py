"""Demo: a small CPU-heavy pipeline on the embedded SQLite default.

It counts the primes below two million in chunks spread over a pool of worker
processes, and shows what stoker does when things go wrong: one task runs past
its hard timeout and its process is killed; one fails on bad input, is retried
with backoff, and ends in the dead-letter queue with its error history.

Run it with ``make demo`` (or ``python examples/pipeline.py`` once built).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import stoker

DB = Path(os.environ.get("STOKER_DEMO_DB", "stoker-demo.db"))
if __name__ == "__main__":
    # Each run starts from an empty database (worker processes, which import
    # this module under another name, leave it alone).
    for suffix in ("", "-wal", "-shm"):
        Path(f"{DB}{suffix}").unlink(missing_ok=True)
queue = stoker.Queue(DB)

LIMIT = 2_000_000
CHUNK = 100_000
#: The number of primes below two million, to check the pipeline's answer.
EXPECTED = 148_933


@queue.task(timeout=30)
def count_primes(low: int, high: int) -> int:
    """Count primes in [low, high) by trial division: pure Python, CPU-bound."""
    count = 0
    for n in range(max(low, 2), high):
        if n % 2 == 0:
            count += n == 2
            continue
        divisor = 3
        while divisor * divisor <= n:
            if n % divisor == 0:
                break
            divisor += 2
        else:
            count += 1
    return count


@queue.task(timeout=1.0, max_retries=0)
def runaway(seed: int) -> int:
    """A computation that never ends; its 1 s hard timeout kills it."""
    x = seed
    while True:
        x = (x * 1103515245 + 12345) % 2**31


@queue.task(max_retries=2, retry_backoff=0.1, retry_jitter=0.0)
def parse_measurement(text: str) -> float:
    """Fails on bad input every time: retried twice, then dead."""
    return float(text)


def main() -> None:
    started = time.perf_counter()
    chunks = count_primes.map([(lo, lo + CHUNK) for lo in range(0, LIMIT, CHUNK)])
    stuck = runaway.delay(7)
    bad = parse_measurement.delay("12.5 kg")
    print(f"sent {len(chunks) + 2} jobs to {DB}; running a pool of 2 worker processes until idle ...")

    queue.run_worker(processes=2, until_idle=True)
    elapsed = time.perf_counter() - started

    total = sum(job.result() for job in chunks)
    verdict = "correct" if total == EXPECTED else "WRONG"
    print(f"\nprimes below {LIMIT:,}: {total:,} ({verdict}), {elapsed:.1f} s")

    try:
        stuck.result()
    except stoker.TaskTimeoutError as error:
        print(f"\nrunaway job {stuck.id}: {type(error).__name__}: {error}")

    print(f"\ndead-letter queue: {len(queue.dead_letters())} job(s)")
    for letter in queue.dead_letters():
        print(f"  job {letter.job.id} ({letter.task_name}), error history:")
        for attempt in letter.job.errors:
            print(f"    attempt {attempt.attempt} [{attempt.kind}] {attempt.type_name}: {attempt.message}")
    try:
        bad.result()
    except ValueError as error:
        print(f"  job {bad.id} re-raises the task's own exception: {type(error).__name__}: {error}")

    print(f"\nstats: {queue.stats()}")


if __name__ == "__main__":
    main()
