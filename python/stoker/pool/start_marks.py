"""Which jobs a supervisor's workers started: what lets a job of a dead
supervisor go back to pending uncounted when it never started.

When a supervisor dies (SIGKILL, OOM kill), its running jobs stay leased to it
until their leases expire, and the reaper then counts each as lost: a crash,
with an error record, since the job may have run. Some of them never started:
a job waiting in a busy worker's pipe (sent ahead) or still held by the
supervisor. Only the worker knows which, and a worker never opens the
database, so before it starts a job it appends the job's id and token to a
file of its own (16 bytes, one ``write``)::

    <database>-starts/<supervisor owner>/<worker pid>

The supervisor that reaps expired leases reads the directory of their owner
first. A job none of its workers recorded goes back to pending, with no crash
and no error record (``Engine.return_unstarted``); the others are reaped as
lost. That is judged only when the owner ran on this host and it and every
worker named in its directory are gone (a live one could still start the
job); otherwise the lease counts as lost, as before. The record is written
before the task runs, so a job that ran at all is recorded: what a kill or
crash of a process cannot undo (an OS crash can lose the page cache, and then
the job may run again uncounted). PostgreSQL databases have no directory
beside them, so their leases always count.

A supervisor removes its directory when it stops with every outcome stored;
the reaper removes a dead owner's directory once none of its jobs runs.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import struct
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

from .guardian import is_running

#: One record: the job id and the token (attempt) of a job a worker started.
RECORD = struct.Struct("<qq")
#: The directory of a database's start records, beside the database file.
DIRECTORY_SUFFIX = "-starts"


def starts_root(database: str) -> Path | None:
    """The directory of ``database``'s start records; None where there is none (PostgreSQL, memory)."""
    if database == ":memory:" or database.startswith(("postgresql://", "postgres://")):
        return None
    return Path(os.path.realpath(database) + DIRECTORY_SUFFIX)


def _directory_name(owner: str) -> str:
    # Owners are "host:pid:hex"; a file name keeps the safe characters.
    return re.sub(r"[^A-Za-z0-9._-]", "_", owner)


def owner_directory(database: str, owner: str) -> Path | None:
    """Where the workers of the supervisor ``owner`` record the jobs they start."""
    root = starts_root(database)
    return None if root is None else root / _directory_name(owner)


class StartLog:
    """A worker's file of the jobs it started (see the module docs)."""

    def __init__(self, directory: str) -> None:
        path = os.path.join(directory, str(os.getpid()))
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def started(self, job_id: int, token: int) -> None:
        """Record the job before it starts: in the kernel once this returns, whatever kills the process."""
        os.write(self._fd, RECORD.pack(job_id, token))


def _owner_pid(owner: str) -> int | None:
    """The pid of the supervisor ``owner`` if it ran on this host, else None."""
    parts = owner.rsplit(":", 2)
    if len(parts) != 3 or parts[0] != socket.gethostname() or not parts[1].isdigit():
        return None
    return int(parts[1])


def _started_jobs(directory: Path) -> set[tuple[int, int]] | None:
    """The jobs the workers recorded, or None if one of those workers may still run."""
    started: set[tuple[int, int]] = set()
    for entry in directory.iterdir():
        if not entry.name.isdigit() or is_running(int(entry.name)):
            return None
        data = entry.read_bytes()
        # A record cut short (the disk filled up) is ignored: its job counts as started below.
        whole = len(data) - len(data) % RECORD.size
        started.update(RECORD.iter_unpack(data[:whole]))
        if whole != len(data):
            return None
    return started


def never_started(
    database: str, expired: Iterable[tuple[int, int, str]]
) -> tuple[list[tuple[int, int]], list[tuple[str, Path]]]:
    """Of the expired leases ``(job id, token, owner)``, the jobs no worker started, and the
    owners whose jobs were judged, with their directories (to remove once none of their
    jobs runs any more)."""
    by_owner: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for job_id, token, owner in expired:
        by_owner[owner].append((job_id, token))
    unstarted: list[tuple[int, int]] = []
    judged: list[tuple[str, Path]] = []
    for owner, jobs in by_owner.items():
        pid = _owner_pid(owner)
        directory = owner_directory(database, owner)
        if pid is None or directory is None or is_running(pid) or not directory.is_dir():
            continue
        started = _started_jobs(directory)
        if started is None:
            continue
        unstarted += [job for job in jobs if job not in started]
        judged.append((owner, directory))
    return unstarted, judged


def remove(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)
