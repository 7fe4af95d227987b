"""The commands that only look.

``info``, ``jobs``, ``show``, ``errors``, ``dead``, ``schedules`` and ``breakers``
read the database and print what they find; they change nothing.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from .._base.statuses import STATUSES
from .._core import __version__ as stoker_version
from ..client.job import retention_ended
from ..client.queue import Queue
from .app import load_queue
from .display import (
    SUMMARY_CHARS,
    compact,
    indent,
    iso,
    json_text,
    print_json,
    print_table,
    result,
    seconds,
    short_repr,
    unpickle,
    when,
)
from .exit_codes import EXIT_OK

if TYPE_CHECKING:
    from .._core import ErrorRecord, JobRecord


def info(args: argparse.Namespace) -> int:
    queue, _ = load_queue(args.app)
    counts = queue.stats()
    engine = queue.engine
    document = {
        # The engine's path: a URL's password is masked there.
        "path": engine.path,
        "backend": engine.backend,
        "schema_version": engine.schema_version,
        "stoker_version": stoker_version,
        "counts": counts,
        "total": sum(counts.values()),
    }
    if args.json:
        print_json(document)
        return EXIT_OK
    print(f"database        {engine.path}")
    print(f"schema version  {engine.schema_version} ({engine.backend}, stoker {stoker_version})")
    for status in STATUSES:
        print(f"{status:>15}  {counts.get(status, 0)}")
    print(f"{'total':>15}  {document['total']}")
    return EXIT_OK


def jobs(args: argparse.Namespace) -> int:
    queue, _ = load_queue(args.app)
    records = queue.engine.list_jobs(
        status=args.status, task_name=args.task, queue=args.queue, limit=args.limit, offset=args.offset
    )
    summaries = [_job_summary(r) for r in records]
    if args.json:
        print_json(summaries)
        return EXIT_OK
    if not summaries:
        print("no jobs")
        return EXIT_OK
    print_table(
        ["ID", "STATUS", "TASK", "QUEUE", "PRIO", "ATTEMPTS", "CREATED", "FINISHED"],
        [
            [
                j["id"],
                j["status"],
                j["task"],
                j["queue"],
                j["priority"],
                j["attempts"],
                j["created_at"],
                j["finished_at"] or "-",
            ]
            for j in summaries
        ],
    )
    return EXIT_OK


def show(args: argparse.Namespace) -> int:
    queue, _ = load_queue(args.app)
    engine = queue.engine
    record = engine.get(args.job_id)
    job = _job_details(queue, record, engine.errors(record.id))
    if args.json:
        print_json(job)
        return EXIT_OK
    rows: list[tuple[str, object]] = [
        ("task", job["task"]),
        ("queue", job["queue"]),
        ("priority", job["priority"]),
        (
            "attempts",
            f"{job['attempts']} (failed {job['failures']}, crashed {job['crashes']}; "
            f"max_retries {job['max_retries']}, max_crashes {job['max_crashes']})",
        ),
        ("timeout", "none" if job["timeout_s"] is None else f"{job['timeout_s']:g} s"),
        ("created", job["created_at"]),
        ("eta", job["eta_at"]),
        ("started", job["started_at"] or "-"),
        ("finished", job["finished_at"] or "-"),
    ]
    if job["status"] == "running":
        rows.append(("lease", f"{job['lease_owner']} until {job['lease_deadline_at']}"))
    if job["cancel_requested"]:
        rows.append(("cancel", "requested"))
    if job["replayed_from"] is not None:
        rows.append(("replay of", job["replayed_from"]))
    rows.append(("labels", "-" if job["labels"] is None else compact(job["labels"])))
    arguments = job["arguments"]
    if arguments["repr"] is not None:
        rows.append(("arguments", arguments["repr"]))
    else:
        rows.append(
            (
                "arguments",
                f"cannot be unpickled here ({arguments['error']}); "
                f"the payload is {arguments['payload_bytes']} bytes",
            )
        )
    shown_result = job["result"]
    if shown_result is not None:
        if shown_result["repr"] is not None:
            rows.append(("result", shown_result["repr"]))
        else:
            rows.append(
                ("result", f"cannot be shown ({shown_result['error']}); {shown_result['bytes']} bytes")
            )
    rows.append(("progress", "-" if job["progress"] is None else compact(job["progress"])))
    rows.append(("usage", "-" if job["usage"] is None else _usage_text(job["usage"])))
    print(f"job {job['id']}  {job['status']}")
    for name, value in rows:
        print(f"  {name:<10}  {value}")
    history = job["errors"]
    print(f"errors: {len(history)}" if history else "errors: none")
    _print_errors(history)
    return EXIT_OK


def errors(args: argparse.Namespace) -> int:
    queue, _ = load_queue(args.app)
    engine = queue.engine
    records = engine.errors(args.job_id)
    if records and retention_ended(engine.get(args.job_id), engine.now_ms()) is not None:
        records = []  # Expired with the result (result_ttl), whether purged yet or not.
    history = [_error_dict(e) for e in records]
    if args.json:
        print_json(history)
        return EXIT_OK
    if not history:
        print(f"job {args.job_id} has no failed attempt")
        return EXIT_OK
    _print_errors(history)
    return EXIT_OK


def dead(args: argparse.Namespace) -> int:
    queue, _ = load_queue(args.app)
    letters = queue.dead_letters(limit=args.limit, offset=args.offset)
    documents = [
        {
            **_job_summary(letter.record),
            "last_error": None
            if letter.error is None
            else {
                "attempt": letter.error.attempt,
                "kind": letter.error.kind,
                "type": letter.error.type_name,
                "message": letter.error.message,
                "failed_at": letter.error.failed_at.isoformat(timespec="milliseconds"),
            },
        }
        for letter in letters
    ]
    if args.json:
        print_json(documents)
        return EXIT_OK
    if not documents:
        print("no dead jobs")
        return EXIT_OK
    print_table(
        ["ID", "TASK", "QUEUE", "ATTEMPTS", "FINISHED", "LAST ERROR"],
        [
            [
                d["id"],
                d["task"],
                d["queue"],
                d["attempts"],
                d["finished_at"],
                _last_error_text(d["last_error"]),
            ]
            for d in documents
        ],
    )
    return EXIT_OK


def schedules(args: argparse.Namespace) -> int:
    queue, _ = load_queue(args.app)
    rows = []
    for schedule in queue.schedules():
        r = schedule.record()
        every = f"every {r.every_ms / 1000:g}s" if r.every_ms is not None else None
        timing = f"cron {r.cron!r} {r.timezone}" if r.cron is not None else every or f"once {when(r.at_ms)}"
        rows.append(
            {
                "id": r.id,
                "name": r.name,
                "task": r.task_name,
                "timing": timing,
                "next_fire": when(r.next_fire_ms),
                "paused": r.paused,
                "missed": r.missed,
                "source": r.source,
                "enqueued": r.enqueued,
            }
        )
    if args.json:
        print_json(rows)
    else:
        for row in rows:
            state = "paused" if row["paused"] else f"next {row['next_fire']}"
            print(
                f"{row['id']:>5}  {row['name'] or '-'}  {row['task']}  {row['timing']}  {state}  "
                f"missed={row['missed']}  enqueued={row['enqueued']}"
            )
    return EXIT_OK


def breakers(args: argparse.Namespace) -> int:
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
            "open_until": when(limit.open_until_ms) if limit.open_until_ms else None,
        }
        for limit in queue.limits()
    ]
    if args.json:
        print_json(rows)
    else:
        for row in rows:
            print("  ".join(f"{k}={v}" for k, v in row.items() if v is not None))
    return EXIT_OK


# --- what they show of a job ---------------------------------------------------------


def _job_summary(record: JobRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "task": record.task_name,
        "queue": record.queue,
        "status": record.status,
        "priority": record.priority,
        "attempts": record.attempt,
        "created_at": iso(record.created_ms),
        "finished_at": iso(record.finished_ms),
        "labels": json_text(record.labels),
    }


def _job_details(queue: Queue, record: JobRecord, history: list[ErrorRecord]) -> dict[str, Any]:
    now_ms = queue.engine.now_ms()
    if retention_ended(record, now_ms) is not None:
        history = []  # Expired with the result (result_ttl), whether purged yet or not.
    return {
        **_job_summary(record),
        "failures": record.failures,
        "crashes": record.crashes,
        "max_retries": record.max_retries,
        "max_crashes": record.max_crashes,
        "timeout_s": seconds(record.timeout_ms),
        "eta_at": iso(record.eta_ms),
        "started_at": iso(record.started_ms),
        "lease_owner": record.lease_owner,
        "lease_deadline_at": iso(record.lease_deadline_ms),
        "cancel_requested": record.cancel_requested,
        "replayed_from": record.replayed_from,
        "arguments": _arguments(queue, record),
        "result": result(queue, record, now_ms),
        "progress": json_text(record.progress),
        "usage": json_text(record.usage),
        "errors": [_error_dict(e) for e in history],
    }


def _arguments(queue: Queue, record: JobRecord) -> dict[str, Any]:
    """A short repr of the job's ``(args, kwargs)``, or why they cannot be shown here."""
    size = len(record.payload)
    try:
        args, kwargs = unpickle(queue, record.payload, job_id=record.id, what="payload")
    except Exception as error:
        return {"repr": None, "error": f"{type(error).__name__}: {error}", "payload_bytes": size}
    parts = [short_repr(a) for a in args] + [f"{k}={short_repr(v)}" for k, v in kwargs.items()]
    text = "(" + ", ".join(parts) + ")"
    if len(text) > SUMMARY_CHARS:
        text = text[: SUMMARY_CHARS - 4] + "...)"
    return {"repr": text, "error": None, "payload_bytes": size}


def _error_dict(record: ErrorRecord) -> dict[str, Any]:
    return {
        "attempt": record.attempt,
        "kind": record.kind,
        "type": record.exc_type,
        "message": record.message,
        "failed_at": iso(record.failed_ms),
        "worker": record.worker,
        "usage": json_text(record.usage),
        "traceback": record.traceback,
    }


def _print_errors(history: list[dict[str, Any]]) -> None:
    for error in history:
        print(f"attempt {error['attempt']}  {error['kind']}  {error['failed_at']}  on {error['worker']}")
        print(f"    {error['type']}: {error['message']}")
        if error["usage"]:
            print(f"    usage: {_usage_text(error['usage'])}")
        if error["traceback"]:
            print(indent(error["traceback"], "    | "))


def _usage_text(usage: Any) -> str:
    if isinstance(usage, dict):
        return "  ".join(f"{key}={value}" for key, value in usage.items())
    return str(usage)


def _last_error_text(error: dict[str, Any] | None) -> str:
    if error is None:
        return "-"
    message = error["message"].strip().splitlines()[0] if error["message"].strip() else ""
    text = f"{error['kind']}: {error['type']}: {message}"
    return text if len(text) <= 120 else text[:117] + "..."
