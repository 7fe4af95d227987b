"""The ``stoker`` command: run a worker pool, look at jobs, act on them.

Every command names the application as ``MODULE:QUEUE`` (``app.tasks:queue``):
the module is imported (so that the arguments and results of its tasks can be
unpickled) and the :class:`~stoker.Queue` it holds gives the database::

    stoker worker  APP [-p N]             run worker processes until SIGTERM/SIGINT
    stoker info    APP                    counts by status, database, backend, schema version (alias: stats)
    stoker jobs    APP [--status S] [--task T] [--queue Q] [--limit N] [--offset N]
    stoker show    APP JOB_ID             one job: options, times, labels, arguments, progress,
                                          resource usage, result, error history
    stoker errors  APP JOB_ID             the error history of one job, with tracebacks
    stoker dead    APP                    dead jobs with their last error
    stoker replay  APP JOB_ID             send a dead job again (a new job)
    stoker cancel  APP JOB_ID             cancel a job (a running one has its worker killed)
    stoker purge   APP [--status S]... [--older-than SECONDS] (--yes | --dry-run)
    stoker wait    APP JOB_ID [--timeout SECONDS]
    stoker wait    APP --drain [--timeout SECONDS]

Every command but ``worker`` takes ``--json``: it then prints one JSON document
on stdout (on failure, ``{"error": {"type": ..., "message": ...}}``). Every
failure is one line on stderr, ``stoker: ...``; ``--traceback`` (any command)
prints the whole traceback before it.

Exit codes:

- 0: success;
- 1: the command failed: a stoker error (printed with its type), a job id that
  does not exist (or is beyond 64 bits), a file that is not a stoker
  database, an app that cannot be loaded (missing, or its module raised while
  imported: the error and where), an error stoker did not foresee;
- 2: wrong usage (unknown option, missing argument, a number out of range
  such as ``--lease nan``, ``purge`` without ``--yes`` or ``--dry-run``);
- 3: ``wait``: the job ended dead;
- 4: ``wait``: the job was cancelled;
- 5: ``wait``: the job (or, with ``--drain``, the queue) did not finish within
  ``--timeout``.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import logging
import os
import reprlib
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, NoReturn

from .._base import serialization
from .._base.bounds import (
    INT64_MAX,
    INT64_MIN,
    MAX_PREFETCH,
    MAX_PROCESSES,
    check_int,
    check_seconds,
)
from .._core import __version__ as stoker_version
from ..client.job import FINISHED, AttemptError, retention_ended
from ..client.queue import Queue
from ..errors import InvalidOptionError, JobNotFoundError, ResultExpiredError, ResultTimeoutError, StokerError

if TYPE_CHECKING:
    from .._core import Engine, ErrorRecord, JobRecord

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_DEAD = 3
EXIT_CANCELLED = 4
EXIT_TIMEOUT = 5

STATUSES = ("pending", "scheduled", "running", "complete", "dead", "cancelled")
UNFINISHED = ("pending", "scheduled", "running")
#: What ``purge`` removes when no ``--status`` is given: every finished job.
PURGE_DEFAULT_STATUSES = ("complete", "dead", "cancelled")
#: ``purge`` deletes in transactions of at most this many jobs, so that workers
#: writing to the same database are never locked out for long.
PURGE_BATCH = 1000
#: ``wait --drain`` looks at the database's change counter after this pause,
#: doubling while nothing changes up to DRAIN_POLL_MAX.
DRAIN_POLL_MIN = 0.005
DRAIN_POLL_MAX = 0.1
#: Without a terminal, ``wait --drain`` prints a progress line at most this often.
DRAIN_LINE_INTERVAL = 1.0
#: Arguments and results are shown as a repr cut to this many characters.
SUMMARY_CHARS = 300


class CommandError(Exception):
    """The command cannot go on; the message says why (exit code 1)."""


class UsageError(Exception):
    """The command was given arguments that do not go together (exit code 2)."""


# --- the application ---------------------------------------------------------------


def load_queue(reference: str) -> tuple[Queue, str]:
    """Import ``module:attribute`` and return the Queue it names, with its module."""
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise CommandError(f"expected MODULE:QUEUE (like app.tasks:queue), got {reference!r}")
    if "" not in sys.path:
        sys.path.insert(0, "")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name and (module_name == error.name or module_name.startswith(error.name + ".")):
            raise CommandError(f"cannot import {module_name!r}: {error}") from None
        raise CommandError(f"cannot import {module_name!r}: {_raised(error)}") from error
    except StokerError:
        raise  # The queue's own error, named already (a file that is not a stoker database).
    except (Exception, SystemExit) as error:
        # The application's module raised while it was imported: its error,
        # where it was raised, in one line (--traceback shows the rest).
        raise CommandError(f"cannot import {module_name!r}: {_raised(error)}") from error
    try:
        queue = getattr(module, attribute)
    except AttributeError:
        raise CommandError(f"module {module_name!r} has no attribute {attribute!r}") from None
    if not isinstance(queue, Queue):
        raise CommandError(f"{reference} is a {type(queue).__qualname__}, not a stoker.Queue")
    return queue, module_name


def _raised(error: BaseException) -> str:
    """``ZeroDivisionError: division by zero (at app/tasks.py, line 3)``: an error and where it was raised."""
    text = f"{type(error).__qualname__}: {error}" if str(error) else type(error).__qualname__
    frames = [f for f in traceback.extract_tb(error.__traceback__) if not f.filename.startswith("<frozen")]
    if frames and not isinstance(error, SyntaxError):  # A SyntaxError's message says where.
        where = frames[-1]
        text += f" (at {_display_path(where.filename)}, line {where.lineno})"
    return text


def _display_path(path: str) -> str:
    """``path`` relative to the working directory when it lies below it."""
    relative = os.path.relpath(path)
    return path if relative.startswith(os.pardir) else relative


def _engine(queue: Queue) -> Engine:
    return queue.engine


# --- formatting --------------------------------------------------------------------


def _iso(ms: int | None) -> str | None:
    """A time in ms since the epoch as ISO 8601 in UTC, to the millisecond."""
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(timespec="milliseconds")


def _seconds(ms: int | None) -> float | None:
    return None if ms is None else ms / 1000


def _json_text(text: str | None) -> Any:
    """JSON text stored by the engine (labels, progress, usage), parsed; kept as text if it is not JSON."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


_REPR = reprlib.Repr()
_REPR.maxstring = 80
_REPR.maxother = 80
_REPR.maxlist = _REPR.maxtuple = _REPR.maxset = _REPR.maxdict = 8
_REPR.maxlevel = 3


def _short_repr(value: Any) -> str:
    try:
        text = _REPR.repr(value)
    except Exception as error:
        text = f"<unrepresentable {type(value).__qualname__}: {type(error).__name__}>"
    return text if len(text) <= SUMMARY_CHARS else text[: SUMMARY_CHARS - 3] + "..."


def _unpickle(queue: Queue, data: bytes, *, job_id: int, what: str) -> Any:
    """Unpickle a payload or a result, checking its signature first when the queue signs them."""
    return serialization.loads(queue.sealer.unseal(data, job_id=job_id, what=what))


def _arguments(queue: Queue, record: JobRecord) -> dict[str, Any]:
    """A short repr of the job's ``(args, kwargs)``, or why they cannot be shown here."""
    size = len(record.payload)
    try:
        args, kwargs = _unpickle(queue, record.payload, job_id=record.id, what="payload")
    except Exception as error:
        return {"repr": None, "error": f"{type(error).__name__}: {error}", "payload_bytes": size}
    parts = [_short_repr(a) for a in args] + [f"{k}={_short_repr(v)}" for k, v in kwargs.items()]
    text = "(" + ", ".join(parts) + ")"
    if len(text) > SUMMARY_CHARS:
        text = text[: SUMMARY_CHARS - 4] + "...)"
    return {"repr": text, "error": None, "payload_bytes": size}


def _result(queue: Queue, record: JobRecord, now_ms: int) -> dict[str, Any] | None:
    """A short repr of a complete job's result, or why it cannot be shown."""
    if record.status != "complete":
        return None
    expired_ms = retention_ended(record, now_ms)
    if expired_ms is not None:
        expired = ResultExpiredError(record.id, expired_ms)
        return {"repr": None, "error": f"{type(expired).__name__}: {expired}", "bytes": 0}
    if record.result is None:
        return {"repr": None, "error": "its task stores no result (store_result=False)", "bytes": 0}
    try:
        value = _unpickle(queue, record.result, job_id=record.id, what="result")
    except Exception as error:
        return {"repr": None, "error": f"{type(error).__name__}: {error}", "bytes": len(record.result)}
    return {"repr": _short_repr(value), "error": None, "bytes": len(record.result)}


def _job_summary(record: JobRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "task": record.task_name,
        "queue": record.queue,
        "status": record.status,
        "priority": record.priority,
        "attempts": record.attempt,
        "created_at": _iso(record.created_ms),
        "finished_at": _iso(record.finished_ms),
        "labels": _json_text(record.labels),
    }


def _job_details(queue: Queue, record: JobRecord, errors: list[ErrorRecord]) -> dict[str, Any]:
    now_ms = _engine(queue).now_ms()
    if retention_ended(record, now_ms) is not None:
        errors = []  # Expired with the result (result_ttl), whether purged yet or not.
    return {
        **_job_summary(record),
        "failures": record.failures,
        "crashes": record.crashes,
        "max_retries": record.max_retries,
        "max_crashes": record.max_crashes,
        "timeout_s": _seconds(record.timeout_ms),
        "eta_at": _iso(record.eta_ms),
        "started_at": _iso(record.started_ms),
        "lease_owner": record.lease_owner,
        "lease_deadline_at": _iso(record.lease_deadline_ms),
        "cancel_requested": record.cancel_requested,
        "replayed_from": record.replayed_from,
        "arguments": _arguments(queue, record),
        "result": _result(queue, record, now_ms),
        "progress": _json_text(record.progress),
        "usage": _json_text(record.usage),
        "errors": [_error_dict(e) for e in errors],
    }


def _error_dict(record: ErrorRecord) -> dict[str, Any]:
    return {
        "attempt": record.attempt,
        "kind": record.kind,
        "type": record.exc_type,
        "message": record.message,
        "failed_at": _iso(record.failed_ms),
        "worker": record.worker,
        "usage": _json_text(record.usage),
        "traceback": record.traceback,
    }


def _print_json(document: Any) -> None:
    print(json.dumps(document, indent=2, default=str))


def _print_table(header: Sequence[str], rows: list[Sequence[object]]) -> None:
    cells = [[str(h) for h in header]] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for row in cells:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def _indent(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line for line in text.rstrip().splitlines())


def _print_errors(errors: list[dict[str, Any]]) -> None:
    for error in errors:
        print(f"attempt {error['attempt']}  {error['kind']}  {error['failed_at']}  on {error['worker']}")
        print(f"    {error['type']}: {error['message']}")
        if error["usage"]:
            print(f"    usage: {_usage_text(error['usage'])}")
        if error["traceback"]:
            print(_indent(error["traceback"], "    | "))


def _usage_text(usage: Any) -> str:
    if isinstance(usage, dict):
        return "  ".join(f"{key}={value}" for key, value in usage.items())
    return str(usage)


def _compact(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


# --- commands ----------------------------------------------------------------------


def _worker(args: argparse.Namespace) -> int:
    queue, module_name = load_queue(args.app)
    queues = [q for q in args.queues.split(",") if q] if args.queues else None
    # This process only supervises: what the application's module loaded stays
    # until it exits, so full collections need not traverse it (the supervisor
    # allocates a few objects per job, which keeps triggering collections).
    gc.freeze()
    queue.run_worker(
        processes=args.processes,
        queues=queues,
        lease=args.lease,
        drain_timeout=args.drain_timeout,
        kill_grace=args.kill_grace,
        until_idle=args.until_idle,
        imports=[module_name],
        start_method=args.start_method,
        prefetch=args.prefetch,
        max_tasks_per_worker=args.max_tasks_per_worker,
        max_worker_memory_mb=args.max_worker_memory_mb,
        # This process only supervises: what a worker that crashed left running
        # is re-parented to it, and killed.
        adopt_orphans=True,
    )
    return EXIT_OK


def _info(args: argparse.Namespace) -> int:
    queue, _ = load_queue(args.app)
    counts = queue.stats()
    engine = _engine(queue)
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
        _print_json(document)
        return EXIT_OK
    print(f"database        {engine.path}")
    print(f"schema version  {engine.schema_version} ({engine.backend}, stoker {stoker_version})")
    for status in STATUSES:
        print(f"{status:>15}  {counts.get(status, 0)}")
    print(f"{'total':>15}  {document['total']}")
    return EXIT_OK


def _jobs(args: argparse.Namespace) -> int:
    queue, _ = load_queue(args.app)
    records = _engine(queue).list_jobs(
        status=args.status, task_name=args.task, queue=args.queue, limit=args.limit, offset=args.offset
    )
    jobs = [_job_summary(r) for r in records]
    if args.json:
        _print_json(jobs)
        return EXIT_OK
    if not jobs:
        print("no jobs")
        return EXIT_OK
    _print_table(
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
            for j in jobs
        ],
    )
    return EXIT_OK


def _show(args: argparse.Namespace) -> int:
    queue, _ = load_queue(args.app)
    engine = _engine(queue)
    record = engine.get(args.job_id)
    job = _job_details(queue, record, engine.errors(record.id))
    if args.json:
        _print_json(job)
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
    rows.append(("labels", "-" if job["labels"] is None else _compact(job["labels"])))
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
    result = job["result"]
    if result is not None:
        if result["repr"] is not None:
            rows.append(("result", result["repr"]))
        else:
            rows.append(("result", f"cannot be shown ({result['error']}); {result['bytes']} bytes"))
    rows.append(("progress", "-" if job["progress"] is None else _compact(job["progress"])))
    rows.append(("usage", "-" if job["usage"] is None else _usage_text(job["usage"])))
    print(f"job {job['id']}  {job['status']}")
    for name, value in rows:
        print(f"  {name:<10}  {value}")
    errors = job["errors"]
    print(f"errors: {len(errors)}" if errors else "errors: none")
    _print_errors(errors)
    return EXIT_OK


def _errors(args: argparse.Namespace) -> int:
    queue, _ = load_queue(args.app)
    engine = _engine(queue)
    records = engine.errors(args.job_id)
    if records and retention_ended(engine.get(args.job_id), engine.now_ms()) is not None:
        records = []  # Expired with the result (result_ttl), whether purged yet or not.
    errors = [_error_dict(e) for e in records]
    if args.json:
        _print_json(errors)
        return EXIT_OK
    if not errors:
        print(f"job {args.job_id} has no failed attempt")
        return EXIT_OK
    _print_errors(errors)
    return EXIT_OK


def _dead(args: argparse.Namespace) -> int:
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
        _print_json(documents)
        return EXIT_OK
    if not documents:
        print("no dead jobs")
        return EXIT_OK
    _print_table(
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


def _last_error_text(error: dict[str, Any] | None) -> str:
    if error is None:
        return "-"
    message = error["message"].strip().splitlines()[0] if error["message"].strip() else ""
    text = f"{error['kind']}: {error['type']}: {message}"
    return text if len(text) <= 120 else text[:117] + "..."


def _replay(args: argparse.Namespace) -> int:
    queue, _ = load_queue(args.app)
    new_job = queue.replay(args.job_id)
    if args.json:
        _print_json({"id": args.job_id, "new_job_id": new_job.id})
    else:
        print(f"job {args.job_id} replayed as job {new_job.id}")
    return EXIT_OK


def _cancel(args: argparse.Namespace) -> int:
    queue, _ = load_queue(args.app)
    job = queue.get_job(args.job_id)
    before = job.status
    # The engine answers "cancelled" for a job cancelled now and for one cancelled before.
    outcome = before if before in FINISHED else job.cancel()
    if args.json:
        _print_json({"id": args.job_id, "outcome": outcome, "was": before})
    elif before in FINISHED:
        print(f"job {args.job_id} is already {before}: nothing to cancel")
    elif outcome == "cancelled":
        print(f"job {args.job_id} cancelled")
    elif outcome == "requested":
        print(f"job {args.job_id} is running: its supervisor will kill it and mark it cancelled")
    else:
        print(f"job {args.job_id} finished as {outcome} first: nothing to cancel")
    return EXIT_OK


def _purge(args: argparse.Namespace) -> int:
    queue, _ = load_queue(args.app)
    engine = _engine(queue)
    statuses = sorted(set(args.status or PURGE_DEFAULT_STATUSES), key=STATUSES.index)
    older_than_ms = None if args.older_than is None else round(args.older_than * 1000)
    if args.dry_run:
        count = _count_purgeable(engine, statuses, older_than_ms)
        if args.json:
            _print_json(
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
        _print_json({"dry_run": False, "statuses": statuses, "older_than_s": args.older_than, "jobs": purged})
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


def _wait(args: argparse.Namespace) -> int:
    if args.drain == (args.job_id is not None):
        raise UsageError("wait takes a JOB_ID or --drain (not both)")
    if args.timeout is not None and args.timeout < 0:
        raise UsageError(f"--timeout must be >= 0, got {args.timeout:g}")
    queue, _ = load_queue(args.app)
    if args.drain:
        return _drain(args, queue)
    job = queue.get_job(args.job_id)
    try:
        status = job.wait(args.timeout)
    except ResultTimeoutError as error:
        if args.json:
            _print_json({"id": job.id, "status": job.status, "timed_out": True})
        print(f"stoker: {error}", file=sys.stderr)
        return EXIT_TIMEOUT
    document: dict[str, Any] = {"id": job.id, "status": status, "timed_out": False}
    record = job.record()
    expired_ms = retention_ended(record, _engine(queue).now_ms())
    if expired_ms is not None:
        raise ResultExpiredError(job.id, expired_ms)
    if status == "complete":
        result = _result(queue, record, _engine(queue).now_ms())
        assert result is not None
        document["result"] = result
        if args.json:
            _print_json(document)
        elif result["repr"] is not None:
            print(result["repr"])
        else:
            print(
                f"stoker: job {job.id} is complete, but its result cannot be shown: {result['error']}",
                file=sys.stderr,
            )
        return EXIT_OK
    if status == "cancelled":
        if args.json:
            _print_json(document)
        else:
            print(f"job {job.id} was cancelled", file=sys.stderr)
        return EXIT_CANCELLED
    errors = job.errors
    last: AttemptError | None = errors[-1] if errors else None
    document["error"] = (
        None
        if last is None
        else {
            "attempt": last.attempt,
            "kind": last.kind,
            "type": last.type_name,
            "message": last.message,
            "traceback": last.traceback,
        }
    )
    if args.json:
        _print_json(document)
    elif last is None:
        print(f"job {job.id} is dead without an error record", file=sys.stderr)
    else:
        print(
            f"job {job.id} is dead after {len(errors)} failed attempt(s); the last one ({last.kind}):",
            file=sys.stderr,
        )
        print(f"{last.type_name}: {last.message}", file=sys.stderr)
        if last.traceback:
            print(_indent(last.traceback, "| "), file=sys.stderr)
    return EXIT_DEAD


def _drain(args: argparse.Namespace, queue: Queue) -> int:
    """Block until no job of the database is pending, scheduled or running."""
    engine = _engine(queue)
    first = engine.stats()
    finished_before = sum(first.get(s, 0) for s in FINISHED)
    deadline = None if args.timeout is None else time.monotonic() + args.timeout

    def progress(counts: dict[str, int]) -> tuple[int, int]:
        finished = max(0, sum(counts.get(s, 0) for s in FINISHED) - finished_before)
        return finished, finished + sum(counts.get(s, 0) for s in UNFINISHED)

    show: _DrainDisplay
    if args.json:
        show = _DrainDisplay()
    elif sys.stdout.isatty():
        show = _rich_display() or _LineDisplay()
    else:
        show = _LineDisplay()
    counts = first
    timed_out = False
    version: int | None = None
    pause = DRAIN_POLL_MIN
    show.start()
    try:
        while True:
            # The counter moves whenever another connection commits: counts are
            # read again only then.
            current = engine.data_version()
            if current != version:
                version = current
                counts = engine.stats()
                pause = DRAIN_POLL_MIN
                show.update(*progress(counts), counts)
            if not any(counts.get(s, 0) for s in UNFINISHED):
                break
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                timed_out = True
                break
            time.sleep(pause if deadline is None else min(pause, deadline - now))
            pause = min(pause * 2, DRAIN_POLL_MAX)
        show.finish(*progress(counts), counts)
    finally:
        show.stop()
    finished, total = progress(counts)
    document = {
        "drained": not timed_out,
        "timed_out": timed_out,
        "finished": finished,
        "total": total,
        "counts": counts,
    }
    if args.json:
        _print_json(document)
    elif timed_out:
        left = total - finished
        print(f"stoker: {left} job(s) still unfinished after {args.timeout:g} s", file=sys.stderr)
    else:
        print(f"drained: {finished} job(s) finished; {_counts_text(counts, FINISHED)} in all")
    return EXIT_TIMEOUT if timed_out else EXIT_OK


def _counts_text(counts: dict[str, int], statuses: Sequence[str] | frozenset[str]) -> str:
    return ", ".join(f"{s} {counts.get(s, 0)}" for s in STATUSES if s in statuses)


class _DrainDisplay:
    """Shows the progress of ``wait --drain``; this base shows nothing (``--json``)."""

    def start(self) -> None:
        return None

    def stop(self) -> None:
        return None

    def update(self, finished: int, total: int, counts: dict[str, int]) -> None:
        return None

    def finish(self, finished: int, total: int, counts: dict[str, int]) -> None:
        return None


class _LineDisplay(_DrainDisplay):
    """One line per change, at most one per DRAIN_LINE_INTERVAL, and a last one."""

    def __init__(self) -> None:
        self._last_line = ""
        self._last_time = -float("inf")

    def _line(self, finished: int, total: int, counts: dict[str, int]) -> str:
        return f"finished {finished}/{total} ({_counts_text(counts, UNFINISHED)})"

    def update(self, finished: int, total: int, counts: dict[str, int]) -> None:
        line = self._line(finished, total, counts)
        now = time.monotonic()
        if line != self._last_line and now - self._last_time >= DRAIN_LINE_INTERVAL:
            print(line, flush=True)
            self._last_line, self._last_time = line, now

    def finish(self, finished: int, total: int, counts: dict[str, int]) -> None:
        line = self._line(finished, total, counts)
        if line != self._last_line:
            print(line, flush=True)


def _rich_display() -> _DrainDisplay | None:
    """A rich progress bar, or None when rich is not installed."""
    try:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )
    except ImportError:
        return None

    class RichDisplay(_DrainDisplay):
        def __init__(self) -> None:
            self._progress = Progress(
                TextColumn("draining"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[detail]}"),
                TimeElapsedColumn(),
            )
            self._task = self._progress.add_task("drain", total=None, detail="")

        def start(self) -> None:
            self._progress.start()

        def stop(self) -> None:
            self._progress.stop()

        def update(self, finished: int, total: int, counts: dict[str, int]) -> None:
            self._progress.update(
                self._task, completed=finished, total=total, detail=_counts_text(counts, UNFINISHED)
            )

        def finish(self, finished: int, total: int, counts: dict[str, int]) -> None:
            self.update(finished, total, counts)

    return RichDisplay()


# --- the parser ----------------------------------------------------------------------


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
        _print_json(rows)
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
        _print_json(rows)
    else:
        for row in rows:
            print("  ".join(f"{k}={v}" for k, v in row.items() if v is not None))
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse, but wrong usage is one line on stderr (exit code 2), like every other failure."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"stoker: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="stoker",
        description="Durable task queue and process pool.",
        epilog="Exit codes: 0 success; 1 the command failed; 2 wrong usage; "
        "wait: 3 the job ended dead, 4 cancelled, 5 timed out. A failure is one line on stderr; "
        "--traceback (after the command) prints the whole traceback too.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    app = _Parser(add_help=False)
    app.add_argument("app", help="MODULE:QUEUE, the module that defines the queue and its tasks")
    app.add_argument(
        "--traceback",
        action="store_true",
        help="on failure, print the whole traceback too (by default one line says what failed)",
    )
    common = _Parser(add_help=False, parents=[app])
    common.add_argument("--json", action="store_true", help="print one JSON document on stdout")

    def command(name: str, run: Callable[[argparse.Namespace], int], help: str, **kw: Any) -> Any:
        sub = commands.add_parser(name, help=help, description=help, parents=[common], **kw)
        sub.set_defaults(run=run)
        return sub

    worker = commands.add_parser("worker", help="run a pool of worker processes for a queue", parents=[app])
    worker.add_argument(
        "-p",
        "--processes",
        type=_int_argument(1, MAX_PROCESSES),
        default=2,
        help="worker processes (default 2)",
    )
    worker.add_argument(
        "-q", "--queues", default=None, help="comma-separated queue names (default: all of the app's)"
    )
    worker.add_argument(
        "--lease", type=_positive_seconds, default=30.0, help="lease length in seconds (default 30)"
    )
    worker.add_argument(
        "--drain-timeout",
        type=_non_negative_float,
        default=30.0,
        help="seconds to finish after SIGTERM (default 30)",
    )
    worker.add_argument(
        "--kill-grace",
        type=_non_negative_float,
        default=0.0,
        help="SIGTERM this long before SIGKILL on timeout",
    )
    worker.add_argument(
        "--until-idle", action="store_true", help="exit once no job is pending, scheduled or running"
    )
    worker.add_argument("--start-method", choices=["spawn", "forkserver"], default=None)
    worker.add_argument(
        "--prefetch",
        type=_int_argument(0, MAX_PREFETCH),
        default=1,
        help="jobs claimed ahead per worker process, 0 for none (default 1)",
    )
    worker.add_argument(
        "--max-tasks-per-worker",
        type=_positive_int,
        default=None,
        metavar="N",
        help="replace each worker process after it ran N jobs (default: never)",
    )
    worker.add_argument(
        "--max-worker-memory-mb",
        type=_positive_megabytes,
        default=None,
        metavar="MB",
        help="replace a worker process after a job that left it (and its children) above MB MiB of RSS",
    )
    worker.set_defaults(run=_worker)

    command("schedules", _schedules, "schedules with their next fire time")
    command("breakers", _breakers, "rate limits, concurrency limits and circuit breakers with their state")
    command(
        "info", _info, "job counts by status, the database path and its schema version", aliases=["stats"]
    )

    jobs = command("jobs", _jobs, "list jobs, newest first")
    jobs.add_argument("--status", choices=STATUSES, default=None)
    jobs.add_argument("--task", default=None, help="task name")
    jobs.add_argument("--queue", default=None, help="queue name")
    jobs.add_argument("--limit", type=_non_negative_int, default=50, help="at most this many (default 50)")
    jobs.add_argument("--offset", type=_non_negative_int, default=0, help="skip this many")

    show = command("show", _show, "one job: options, times, arguments, progress, usage, errors")
    show.add_argument("job_id", type=int, metavar="JOB_ID")

    errors = command("errors", _errors, "the error history of a job, with tracebacks")
    errors.add_argument("job_id", type=int, metavar="JOB_ID")

    dead = command("dead", _dead, "dead jobs with their last error, most recent first")
    dead.add_argument("--limit", type=_non_negative_int, default=50, help="at most this many (default 50)")
    dead.add_argument("--offset", type=_non_negative_int, default=0, help="skip this many")

    replay = command("replay", _replay, "send a dead job again, as a new job with the same arguments")
    replay.add_argument("job_id", type=int, metavar="JOB_ID")

    cancel = command("cancel", _cancel, "cancel a job; a running one has its worker killed")
    cancel.add_argument("job_id", type=int, metavar="JOB_ID")

    purge = command("purge", _purge, "delete finished jobs and their error history")
    purge.add_argument(
        "--status",
        action="append",
        choices=PURGE_DEFAULT_STATUSES,
        help="a status to purge; repeat for several (default: complete, dead and cancelled)",
    )
    purge.add_argument(
        "--older-than",
        type=_non_negative_float,
        default=None,
        metavar="SECONDS",
        help="only jobs that finished more than this long ago",
    )
    confirm = purge.add_mutually_exclusive_group()
    confirm.add_argument("--yes", action="store_true", help="really delete")
    confirm.add_argument("--dry-run", action="store_true", help="only count what would be deleted")

    wait = command(
        "wait",
        _wait,
        "block until a job finishes (exit code: 0 complete, 3 dead, 4 cancelled, 5 timed out), "
        "or with --drain until no job is pending, scheduled or running",
    )
    wait.add_argument("job_id", type=int, nargs="?", default=None, metavar="JOB_ID")
    wait.add_argument("--drain", action="store_true", help="wait for every job of the database")
    wait.add_argument("--timeout", type=_non_negative_float, default=None, metavar="SECONDS")
    return parser


def _argument_error(error: InvalidOptionError) -> argparse.ArgumentTypeError:
    """The range an option's check names (``must be ...``), for argparse to print after the option."""
    text = str(error)
    return argparse.ArgumentTypeError(text[text.index("must be") :] if "must be" in text else text)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return value


def _positive_megabytes(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of MiB > 0, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of MiB > 0, got {text!r}")
    return value


def _int_argument(low: int, high: int = INT64_MAX) -> Callable[[str], int]:
    """An argparse type: an int within ``[low, high]`` (the ranges of ``_bounds.py``)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an int, got {text!r}") from None
        try:
            return check_int("value", value, low=low, high=high)
        except InvalidOptionError as error:
            raise _argument_error(error) from None

    return parse


def _seconds_argument(*, allow_zero: bool) -> Callable[[str], float]:
    """An argparse type: a finite number of seconds the engine can hold (no NaN, no infinity)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
        try:
            return check_seconds("value", value, allow_zero=allow_zero)
        except InvalidOptionError as error:
            raise _argument_error(error) from None

    return parse


_non_negative_int = _int_argument(0)
_non_negative_float = _seconds_argument(allow_zero=True)
_positive_seconds = _seconds_argument(allow_zero=False)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``stoker`` command; return its exit code (argparse exits with 2 on wrong usage).

    A failure prints one line, ``stoker: ...`` (with ``--json``, also the
    error document on stdout); ``--traceback`` prints the whole traceback
    before it.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "worker":
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    as_json = bool(getattr(args, "json", False))
    try:
        job_id = getattr(args, "job_id", None)
        if job_id is not None and not INT64_MIN <= job_id <= INT64_MAX:
            raise JobNotFoundError(job_id)  # Ids are 64-bit: no job has this one.
        return int(args.run(args))
    except UsageError as error:
        print(f"stoker: {error} (see stoker {args.command} --help)", file=sys.stderr)
        return EXIT_USAGE
    except (StokerError, CommandError) as error:
        _report_failure(args, error, as_json=as_json, expected=True)
        return EXIT_FAILED
    except Exception as error:
        # Not an error stoker foresaw (a bug in stoker or in the application's
        # code that the command ran): still one line; --traceback shows where.
        _report_failure(args, error, as_json=as_json, expected=False)
        return EXIT_FAILED


def _report_failure(args: argparse.Namespace, error: Exception, *, as_json: bool, expected: bool) -> None:
    kind = type(error).__name__
    if as_json:
        _print_json({"error": {"type": kind, "message": str(error)}})
    if args.traceback:
        traceback.print_exception(error, file=sys.stderr)
    if isinstance(error, CommandError):
        line = f"stoker: {error}"
    elif expected:
        line = f"stoker: {kind}: {error}"
    else:
        line = f"stoker: {args.command} failed: {_raised(error)}"
    if not args.traceback and (error.__cause__ is not None or not expected):
        line += " (--traceback shows the whole traceback)"
    print(line, file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
