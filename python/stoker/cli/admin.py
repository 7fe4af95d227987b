"""The commands that change jobs: ``replay``, ``cancel`` and ``purge``."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from .._base.statuses import FINISHED, STATUSES
from .app import load_queue
from .display import print_json
from .exit_codes import EXIT_OK, UsageError

if TYPE_CHECKING:
    from .._core import Engine

#: What ``purge`` removes when no ``--status`` is given: every job that
#: finished by running or by being cancelled. Expired jobs (which never ran)
#: are purged when ``--status expired`` names them.
PURGE_DEFAULT_STATUSES = ("complete", "dead", "cancelled")
#: What ``purge --status`` accepts: the finished statuses, whose jobs never change again.
PURGEABLE_STATUSES = tuple(status for status in STATUSES if status in FINISHED)
#: ``purge`` deletes in transactions of at most this many jobs, so that workers
#: writing to the same database are never locked out for long.
PURGE_BATCH = 1000


def replay(args: argparse.Namespace) -> int:
    queue, _ = load_queue(args.app)
    new_job = queue.replay(args.job_id)
    if args.json:
        print_json({"id": args.job_id, "new_job_id": new_job.id})
    else:
        print(f"job {args.job_id} replayed as job {new_job.id}")
    return EXIT_OK


def cancel(args: argparse.Namespace) -> int:
    queue, _ = load_queue(args.app)
    job = queue.get_job(args.job_id)
    before = job.status
    # The engine answers "cancelled" for a job cancelled now and for one cancelled before.
    outcome = before if before in FINISHED else job.cancel()
    if args.json:
        print_json({"id": args.job_id, "outcome": outcome, "was": before})
    elif before in FINISHED:
        print(f"job {args.job_id} is already {before}: nothing to cancel")
    elif outcome == "cancelled":
        print(f"job {args.job_id} cancelled")
    elif outcome == "requested":
        print(f"job {args.job_id} is running: its supervisor will kill it and mark it cancelled")
    else:
        print(f"job {args.job_id} finished as {outcome} first: nothing to cancel")
    return EXIT_OK


def purge(args: argparse.Namespace) -> int:
    queue, _ = load_queue(args.app)
    engine = queue.engine
    statuses = sorted(set(args.status or PURGE_DEFAULT_STATUSES), key=STATUSES.index)
    older_than_ms = None if args.older_than is None else round(args.older_than * 1000)
    if args.dry_run:
        count = _count_purgeable(engine, statuses, older_than_ms)
        if args.json:
            print_json(
                {"dry_run": True, "statuses": statuses, "older_than_s": args.older_than, "jobs": count}
            )
        else:
            print(f"would purge {count} job(s) ({', '.join(statuses)}{_age_text(args.older_than)})")
        return EXIT_OK
    if not args.yes:
        raise UsageError("purge deletes jobs and their error history for good: add --yes (or --dry-run)")
    purged = 0
    while True:
        removed = engine.purge_jobs(statuses, older_than_ms=older_than_ms, limit=PURGE_BATCH)
        purged += removed
        if removed < PURGE_BATCH:
            break
    if args.json:
        print_json({"dry_run": False, "statuses": statuses, "older_than_s": args.older_than, "jobs": purged})
    else:
        print(f"purged {purged} job(s) ({', '.join(statuses)}{_age_text(args.older_than)})")
    return EXIT_OK


def _age_text(older_than: float | None) -> str:
    return "" if older_than is None else f", finished more than {older_than:g} s ago"


def _count_purgeable(engine: Engine, statuses: list[str], older_than_ms: int | None) -> int:
    """How many jobs ``purge_jobs`` would remove (same rule: finished before now - older_than)."""
    if older_than_ms is None:
        counts = engine.stats()
        return sum(counts.get(status, 0) for status in statuses)
    before = engine.now_ms() - older_than_ms
    count = 0
    for status in statuses:
        offset = 0
        while True:
            page = engine.list_jobs(status=status, limit=PURGE_BATCH, offset=offset)
            count += sum(1 for r in page if r.finished_ms is not None and r.finished_ms < before)
            if len(page) < PURGE_BATCH:
                break
            offset += PURGE_BATCH
    return count
