"""The ``stoker`` command.

Exit codes: 0 success; 1 the command failed (the message says why); 2 wrong
usage.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from collections.abc import Sequence
from datetime import datetime, timezone

from .errors import StokerError
from .queue import Queue


def load_queue(reference: str) -> tuple[Queue, str]:
    """Import ``module:attribute`` and return the Queue it names, with its module."""
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise SystemExit(f"stoker: expected MODULE:QUEUE (like app.tasks:queue), got {reference!r}")
    if "" not in sys.path:
        sys.path.insert(0, "")
    module = importlib.import_module(module_name)
    try:
        queue = getattr(module, attribute)
    except AttributeError:
        raise SystemExit(f"stoker: module {module_name!r} has no attribute {attribute!r}") from None
    if not isinstance(queue, Queue):
        raise SystemExit(f"stoker: {reference} is a {type(queue).__qualname__}, not a stoker.Queue")
    return queue, module_name


def _worker(args: argparse.Namespace) -> int:
    queue, module_name = load_queue(args.app)
    queues = [q for q in args.queues.split(",") if q] if args.queues else None
    queue.run_worker(
        processes=args.processes,
        queues=queues,
        lease=args.lease,
        drain_timeout=args.drain_timeout,
        kill_grace=args.kill_grace,
        until_idle=args.until_idle,
        imports=[module_name],
        start_method=args.start_method,
    )
    return 0


def _stats(args: argparse.Namespace) -> int:
    queue, _ = load_queue(args.app)
    stats = queue.stats()
    if args.json:
        print(json.dumps(stats))
    else:
        for status, count in stats.items():
            print(f"{status:>10}  {count}")
    return 0


def _when(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(timespec="milliseconds")


def _schedules(args: argparse.Namespace) -> int:
    queue, _ = load_queue(args.app)
    rows = []
    for schedule in queue.schedules():
        r = schedule.record()
        every = f"every {r.every_ms / 1000:g}s" if r.every_ms is not None else None
        timing = f"cron {r.cron!r} {r.timezone}" if r.cron is not None else every or f"once {_when(r.at_ms)}"
        rows.append(
            {
                "id": r.id,
                "name": r.name,
                "task": r.task_name,
                "timing": timing,
                "next_fire": _when(r.next_fire_ms),
                "paused": r.paused,
                "missed": r.missed,
                "source": r.source,
                "enqueued": r.enqueued,
            }
        )
    if args.json:
        print(json.dumps(rows))
    else:
        for row in rows:
            state = "paused" if row["paused"] else f"next {row['next_fire']}"
            print(
                f"{row['id']:>5}  {row['name'] or '-'}  {row['task']}  {row['timing']}  {state}  "
                f"missed={row['missed']}  enqueued={row['enqueued']}"
            )
    return 0


def _breakers(args: argparse.Namespace) -> int:
    queue, _ = load_queue(args.app)
    rows = [
        {
            "key": limit.key,
            "rate": limit.rate,
            "tokens": limit.tokens,
            "concurrency": limit.concurrency,
            "running": limit.running,
            "breaker": limit.breaker,
            "breaker_state": limit.breaker_state if limit.breaker else None,
            "recent_failures": limit.recent_failures,
            "open_until": _when(limit.open_until_ms) if limit.open_until_ms else None,
        }
        for limit in queue.limits()
    ]
    if args.json:
        print(json.dumps(rows))
    else:
        for row in rows:
            print("  ".join(f"{k}={v}" for k, v in row.items() if v is not None))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stoker", description="Durable task queue and process pool.")
    commands = parser.add_subparsers(dest="command", required=True)

    worker = commands.add_parser("worker", help="run a pool of worker processes for a queue")
    worker.add_argument("app", help="MODULE:QUEUE, the module that defines the queue and its tasks")
    worker.add_argument("-p", "--processes", type=int, default=2, help="worker processes (default 2)")
    worker.add_argument(
        "-q", "--queues", default=None, help="comma-separated queue names (default: all of the app's)"
    )
    worker.add_argument("--lease", type=float, default=30.0, help="lease length in seconds (default 30)")
    worker.add_argument(
        "--drain-timeout", type=float, default=30.0, help="seconds to finish after SIGTERM (default 30)"
    )
    worker.add_argument(
        "--kill-grace", type=float, default=0.0, help="SIGTERM this long before SIGKILL on timeout"
    )
    worker.add_argument(
        "--until-idle", action="store_true", help="exit once no job is pending, scheduled or running"
    )
    worker.add_argument("--start-method", choices=["spawn", "forkserver"], default=None)
    worker.set_defaults(run=_worker)

    stats = commands.add_parser("stats", help="job counts by status")
    stats.add_argument("app", help="MODULE:QUEUE")
    stats.add_argument("--json", action="store_true", help="print JSON")
    stats.set_defaults(run=_stats)

    schedules = commands.add_parser("schedules", help="schedules with their next fire time")
    schedules.add_argument("app", help="MODULE:QUEUE")
    schedules.add_argument("--json", action="store_true", help="print JSON")
    schedules.set_defaults(run=_schedules)

    breakers = commands.add_parser("breakers", help="rate limits, concurrency limits and circuit breakers")
    breakers.add_argument("app", help="MODULE:QUEUE")
    breakers.add_argument("--json", action="store_true", help="print JSON")
    breakers.set_defaults(run=_breakers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return int(args.run(args))
    except StokerError as error:
        print(f"stoker: {type(error).__name__}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
