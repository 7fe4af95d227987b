"""The commands that block: ``wait JOB_ID`` until a job finishes, ``wait --drain`` until every job has."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Collection

from .._base.statuses import FINISHED, STATUSES, UNFINISHED
from ..client.job import AttemptError, retention_ended
from ..client.queue import Queue
from ..errors import ResultExpiredError, ResultTimeoutError
from .app import load_queue
from .display import indent, print_json, result
from .exit_codes import EXIT_CANCELLED, EXIT_DEAD, EXIT_OK, EXIT_TIMEOUT, UsageError

#: ``wait --drain`` looks at the database's change counter after this pause,
#: doubling while nothing changes up to DRAIN_POLL_MAX.
DRAIN_POLL_MIN = 0.005
DRAIN_POLL_MAX = 0.1
#: Without a terminal, ``wait --drain`` prints a progress line at most this often.
DRAIN_LINE_INTERVAL = 1.0


def wait(args: argparse.Namespace) -> int:
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
            print_json({"id": job.id, "status": job.status, "timed_out": True})
        print(f"stoker: {error}", file=sys.stderr)
        return EXIT_TIMEOUT
    document: dict[str, object] = {"id": job.id, "status": status, "timed_out": False}
    record = job.record()
    expired_ms = retention_ended(record, queue.engine.now_ms())
    if expired_ms is not None:
        raise ResultExpiredError(job.id, expired_ms)
    if status == "complete":
        shown = result(queue, record, queue.engine.now_ms())
        assert shown is not None
        document["result"] = shown
        if args.json:
            print_json(document)
        elif shown["repr"] is not None:
            print(shown["repr"])
        else:
            print(
                f"stoker: job {job.id} is complete, but its result cannot be shown: {shown['error']}",
                file=sys.stderr,
            )
        return EXIT_OK
    if status == "cancelled":
        if args.json:
            print_json(document)
        else:
            print(f"job {job.id} was cancelled", file=sys.stderr)
        return EXIT_CANCELLED
    if status == "expired":
        # Its expiry passed before it ran; like a dead job it has no result
        # and never will, so it ends with the same exit code.
        if args.json:
            print_json({**document, "error": None})
        else:
            print(f"job {job.id} expired before it ran: it never will", file=sys.stderr)
        return EXIT_DEAD
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
        print_json(document)
    elif last is None:
        print(f"job {job.id} is dead without an error record", file=sys.stderr)
    else:
        print(
            f"job {job.id} is dead after {len(errors)} failed attempt(s); the last one ({last.kind}):",
            file=sys.stderr,
        )
        print(f"{last.type_name}: {last.message}", file=sys.stderr)
        if last.traceback:
            print(indent(last.traceback, "| "), file=sys.stderr)
    return EXIT_DEAD


def _drain(args: argparse.Namespace, queue: Queue) -> int:
    """Block until no job of the database is unfinished (pending, scheduled, running or waiting)."""
    engine = queue.engine
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
        print_json(document)
    elif timed_out:
        left = total - finished
        print(f"stoker: {left} job(s) still unfinished after {args.timeout:g} s", file=sys.stderr)
    else:
        print(f"drained: {finished} job(s) finished; {_counts_text(counts, FINISHED)} in all")
    return EXIT_TIMEOUT if timed_out else EXIT_OK


def _counts_text(counts: dict[str, int], statuses: Collection[str]) -> str:
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
