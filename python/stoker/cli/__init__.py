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
    stoker schedules APP                  schedules with their next fire time
    stoker breakers  APP                  rate and concurrency limits, circuit breakers

This module holds the parser and :func:`main`; the commands live in
``inspect`` (they only look), ``admin`` (they change jobs), ``waiting``
(``wait``) and ``serve`` (``worker``), with ``display`` for what they print,
``app`` to load ``MODULE:QUEUE``, ``arguments`` for the types of the numeric
options and ``exit_codes`` for the codes below.

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
- 3: ``wait``: the job ended dead (or expired before it ran);
- 4: ``wait``: the job was cancelled;
- 5: ``wait``: the job (or, with ``--drain``, the queue) did not finish within
  ``--timeout``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from .._base.bounds import INT64_MAX, INT64_MIN, MAX_PREFETCH, MAX_PROCESSES
from .._base.statuses import STATUSES
from ..errors import JobNotFoundError, StokerError
from . import admin, inspect, serve, waiting
from .app import raised
from .arguments import (
    int_argument,
    non_negative_int,
    non_negative_seconds,
    positive_int,
    positive_megabytes,
    positive_seconds,
)
from .display import print_json
from .exit_codes import (
    EXIT_CANCELLED,
    EXIT_DEAD,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    CommandError,
    UsageError,
)

__all__ = [
    "EXIT_CANCELLED",
    "EXIT_DEAD",
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_TIMEOUT",
    "EXIT_USAGE",
    "CommandError",
    "UsageError",
    "build_parser",
    "main",
]


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
        type=int_argument(1, MAX_PROCESSES),
        default=2,
        help="worker processes (default 2)",
    )
    worker.add_argument(
        "-q", "--queues", default=None, help="comma-separated queue names (default: all of the app's)"
    )
    worker.add_argument(
        "--lease", type=positive_seconds, default=30.0, help="lease length in seconds (default 30)"
    )
    worker.add_argument(
        "--drain-timeout",
        type=non_negative_seconds,
        default=30.0,
        help="seconds to finish after SIGTERM (default 30)",
    )
    worker.add_argument(
        "--kill-grace",
        type=non_negative_seconds,
        default=0.0,
        help="SIGTERM this long before SIGKILL on timeout",
    )
    worker.add_argument(
        "--until-idle", action="store_true", help="exit once no job is pending, scheduled or running"
    )
    worker.add_argument("--start-method", choices=["spawn", "forkserver"], default=None)
    worker.add_argument(
        "--prefetch",
        type=int_argument(0, MAX_PREFETCH),
        default=1,
        help="jobs claimed ahead per worker process, 0 for none (default 1)",
    )
    worker.add_argument(
        "--max-tasks-per-worker",
        type=positive_int,
        default=None,
        metavar="N",
        help="replace each worker process after it ran N jobs (default: never)",
    )
    worker.add_argument(
        "--max-worker-memory-mb",
        type=positive_megabytes,
        default=None,
        metavar="MB",
        help="replace a worker process after a job that left it (and its children) above MB MiB of RSS",
    )
    worker.set_defaults(run=serve.worker)

    command("schedules", inspect.schedules, "schedules with their next fire time")
    command(
        "breakers", inspect.breakers, "rate limits, concurrency limits and circuit breakers with their state"
    )
    command(
        "info",
        inspect.info,
        "job counts by status, the database path and its schema version",
        aliases=["stats"],
    )

    jobs = command("jobs", inspect.jobs, "list jobs, newest first")
    jobs.add_argument("--status", choices=STATUSES, default=None)
    jobs.add_argument("--task", default=None, help="task name")
    jobs.add_argument("--queue", default=None, help="queue name")
    jobs.add_argument("--limit", type=non_negative_int, default=50, help="at most this many (default 50)")
    jobs.add_argument("--offset", type=non_negative_int, default=0, help="skip this many")

    show = command("show", inspect.show, "one job: options, times, arguments, progress, usage, errors")
    show.add_argument("job_id", type=int, metavar="JOB_ID")

    errors = command("errors", inspect.errors, "the error history of a job, with tracebacks")
    errors.add_argument("job_id", type=int, metavar="JOB_ID")

    dead = command("dead", inspect.dead, "dead jobs with their last error, most recent first")
    dead.add_argument("--limit", type=non_negative_int, default=50, help="at most this many (default 50)")
    dead.add_argument("--offset", type=non_negative_int, default=0, help="skip this many")

    replay = command("replay", admin.replay, "send a dead job again, as a new job with the same arguments")
    replay.add_argument("job_id", type=int, metavar="JOB_ID")

    cancel = command("cancel", admin.cancel, "cancel a job; a running one has its worker killed")
    cancel.add_argument("job_id", type=int, metavar="JOB_ID")

    purge = command("purge", admin.purge, "delete finished jobs and their error history")
    purge.add_argument(
        "--status",
        action="append",
        choices=admin.PURGEABLE_STATUSES,
        help="a status to purge; repeat for several (default: complete, dead and cancelled)",
    )
    purge.add_argument(
        "--older-than",
        type=non_negative_seconds,
        default=None,
        metavar="SECONDS",
        help="only jobs that finished more than this long ago",
    )
    confirm = purge.add_mutually_exclusive_group()
    confirm.add_argument("--yes", action="store_true", help="really delete")
    confirm.add_argument("--dry-run", action="store_true", help="only count what would be deleted")

    wait = command(
        "wait",
        waiting.wait,
        "block until a job finishes (exit code: 0 complete, 3 dead, 4 cancelled, 5 timed out), "
        "or with --drain until no job is pending, scheduled, running or waiting",
    )
    wait.add_argument("job_id", type=int, nargs="?", default=None, metavar="JOB_ID")
    wait.add_argument("--drain", action="store_true", help="wait for every job of the database")
    wait.add_argument("--timeout", type=non_negative_seconds, default=None, metavar="SECONDS")
    return parser


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
        print_json({"error": {"type": kind, "message": str(error)}})
    if args.traceback:
        traceback.print_exception(error, file=sys.stderr)
    if isinstance(error, CommandError):
        line = f"stoker: {error}"
    elif expected:
        line = f"stoker: {kind}: {error}"
    else:
        line = f"stoker: {args.command} failed: {raised(error)}"
    if not args.traceback and (error.__cause__ is not None or not expected):
        line += " (--traceback shows the whole traceback)"
    print(line, file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
