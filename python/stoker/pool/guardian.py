"""The guardian, and the kill of a whole process tree that it shares with the supervisor and the workers.

The supervisor starts this small process (as a script, so it imports nothing
of stoker) and writes ``+PID`` when it starts a worker and ``-PID`` when the
worker has ended. When the supervisor's end of the pipe closes, because it
stopped or because it was SIGKILLed, the guardian kills every worker still
listed with everything that descends from it (:func:`kill_tree`) and exits.

Every worker is a child subreaper (``PR_SET_CHILD_SUBREAPER``): a process
that a task started and that lost its parent (a double-forked daemon) is
re-parented to the worker instead of to init, and one that left the worker's
session or process group (``setsid``) is still its descendant. So the
worker's tree, read from ``/proc/<pid>/task/*/children``, holds everything
its tasks started, and a kill of the tree reaches all of it; a process
group kill would miss what called ``setsid``.

The kernel's parent-death signal cannot do this alone: with forkserver a
worker's parent is the fork server, which outlives the supervisor as long as
any worker lives; with spawn a worker killed by it would leave its task's
children to init. A thread inside the worker cannot either: a task spinning
in C code holds the GIL.

The functions below use nothing but the standard library, so that this
script runs without stoker's package and its extension.
"""

from __future__ import annotations

import os
import signal
import sys
import time

#: How long a tree kill goes on killing what it finds (processes that fork
#: while it kills, processes slow to die). The kill normally takes a
#: millisecond or two; this bounds a tree that keeps growing faster than it is
#: killed, or a process stuck in an uninterruptible sleep: longer catches
#: more of those, and holds up the caller (the supervisor's loop) longer.
TREE_KILL_WAIT = 2.0
#: Pause between two rounds of a tree kill: the killed processes get a moment
#: to exit (and their children to be re-parented) before the tree is read again.
TREE_KILL_ROUND_PAUSE = 0.0002
#: Process states of /proc/<pid>/stat that are not running code any more
#: (zombie, dead) and those that are stopped (by a signal, by a tracer).
_GONE_STATES = (b"Z", b"X")
_STOPPED_STATES = (b"T", b"t")


def _has_children_files() -> bool:
    """Whether the kernel lists each task's children (CONFIG_PROC_CHILDREN)."""
    return os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children")


_CHILDREN_FILES = sys.platform.startswith("linux") and _has_children_files()


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (of each of its threads), zombies included."""
    if not _CHILDREN_FILES:
        return _children_by_scan(pid)
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    found: list[int] = []
    for thread in threads:
        try:
            with open(f"/proc/{pid}/task/{thread}/children", "rb") as listing:
                found.extend(map(int, listing.read().split()))
        except OSError:
            continue  # The thread ended meanwhile.
    return found


def _children_by_scan(pid: int) -> list[int]:
    """The children of ``pid`` by their parent field, where the kernel does not list them."""
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    found = []
    for entry in entries:
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat is not None and int(stat[1]) == pid:
                found.append(int(entry))
    return found


def _stat(pid: int) -> list[bytes] | None:
    """The fields of /proc/<pid>/stat after the command name (state first), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            data = stat.read()
    except OSError:
        return None
    return data[data.rindex(b")") + 2 :].split()


def _state(pid: int) -> bytes | None:
    stat = _stat(pid)
    return stat[0] if stat else None


def is_running(pid: int) -> bool:
    """The process exists and has not exited (a zombie has)."""
    state = _state(pid)
    return state is not None and state not in _GONE_STATES


def live_descendants(root: int) -> list[int]:
    """Every descendant of ``root`` that has not exited, parents before their children."""
    found: list[int] = []
    todo = children(root)
    while todo:
        pid = todo.pop()
        if is_running(pid):
            found.append(pid)
            todo.extend(children(pid))
    return found


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def signal_tree(root: int, signum: int) -> None:
    """Send ``signum`` to ``root`` and to every live descendant of it (SIGTERM before a kill)."""
    for pid in (*live_descendants(root), root):
        _signal(pid, signum)


def _walk(root: int, spare: frozenset[int]) -> tuple[frozenset[int], frozenset[int], bool]:
    """One read of the tree under ``root`` (but the ``spare`` children's subtrees).

    Returns the live descendants, the exited ones (zombies), and whether every
    live one was stopped when it was read; live ones that were not are sent
    SIGSTOP.
    """
    live: set[int] = set()
    exited: set[int] = set()
    all_stopped = True
    todo = [pid for pid in children(root) if pid not in spare]
    while todo:
        pid = todo.pop()
        state = _state(pid)
        if state is None or state in _GONE_STATES:
            exited.add(pid)
            continue
        live.add(pid)
        if state not in _STOPPED_STATES:
            all_stopped = False
            _signal(pid, signal.SIGSTOP)
        todo.extend(children(pid))
    return frozenset(live), frozenset(exited), all_stopped


def kill_descendants(root: int, *, wait: float = TREE_KILL_WAIT, spare: frozenset[int] = frozenset()) -> None:
    """SIGKILL every descendant of ``root`` until none is left, for ``wait`` seconds at most.

    ``root`` must be a child subreaper that neither forks nor reaps meanwhile
    (stopped, or the calling process itself), so that a descendant whose
    parent dies is re-parented to ``root``, where the next read finds it.
    The tree is frozen first: every live descendant is stopped (SIGSTOP),
    round after round, until two reads in a row find the same processes,
    all stopped; nothing in it can fork or exit any more, so that read is
    the whole tree, and all of it is killed at once. Rounds of kills follow
    until none is left (a stopped process of a group orphaned by a kill is
    continued by the kernel). The children of ``root`` listed in ``spare``
    are left alone with their own descendants (a worker's kept children).
    Zombies are left to their parent.
    """
    deadline = time.monotonic() + wait
    last: tuple[frozenset[int], frozenset[int]] | None = None
    while time.monotonic() < deadline:
        live, exited, all_stopped = _walk(root, spare)
        if all_stopped and last == (live, exited):
            break
        last = (live, exited)
        if not all_stopped:
            time.sleep(TREE_KILL_ROUND_PAUSE)
    while True:
        listed = children(root)
        left = [pid for pid in listed if pid not in spare and is_running(pid)]
        if not left:
            # Every child listed had exited when its state was read; one that
            # exited after the list was read may have left a child to ``root``
            # meanwhile. The same list again means none did.
            if sorted(children(root)) == sorted(listed) or time.monotonic() >= deadline:
                return
            continue
        for child in left:
            for pid in (child, *live_descendants(child)):
                _signal(pid, signal.SIGKILL)
        if time.monotonic() >= deadline:
            return
        time.sleep(TREE_KILL_ROUND_PAUSE)


PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


def prctl(option: int, value: int) -> bool:
    """One prctl(2) call (Linux only); whether it succeeded."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(option, value, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def become_subreaper() -> bool:
    """Make this process a child subreaper (Linux): orphans of its descendants
    are re-parented to it instead of to init. Whether it is one now."""
    return prctl(PR_SET_CHILD_SUBREAPER, 1)


def kill_tree(root: int, *, wait: float = TREE_KILL_WAIT) -> None:
    """SIGKILL ``root`` (a worker, a child subreaper) and everything that descends from it.

    ``root`` is stopped first (SIGSTOP), so that it can neither start a
    process nor reap one while its tree is read, and nothing of its tree
    can be re-parented elsewhere; it is killed last, once its tree is empty.
    """
    deadline = time.monotonic() + wait
    while True:
        _signal(root, signal.SIGSTOP)
        # The stop takes effect when the process next leaves the kernel; a
        # process in an uninterruptible sleep stops later, and is then killed anyway.
        while _state(root) not in (None, *_GONE_STATES, *_STOPPED_STATES) and time.monotonic() < deadline:
            time.sleep(TREE_KILL_ROUND_PAUSE)
        kill_descendants(root, wait=max(0.0, deadline - time.monotonic()))
        # The kernel continues (SIGCONT) the stopped members of a process group
        # that its parent's death orphans, which a dying supervisor's worker may
        # be (spawn): stopped again, its tree is read again.
        if _state(root) in (None, *_GONE_STATES, *_STOPPED_STATES) or time.monotonic() >= deadline:
            break
    _signal(root, signal.SIGKILL)
    # Its process group too, where the tree could not be read (no /proc).
    try:
        os.killpg(root, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    workers: set[int] = set()
    for line in sys.stdin.buffer:
        text = line.strip()
        if not text:
            continue
        pid = int(text[1:])
        if text[:1] == b"+":
            workers.add(pid)
        else:
            workers.discard(pid)
    # Stop them all at once first: a worker left running while another's tree
    # is killed would go on with its task meanwhile.
    for pid in workers:
        _signal(pid, signal.SIGSTOP)
    for pid in workers:
        kill_tree(pid)


if __name__ == "__main__":
    main()
