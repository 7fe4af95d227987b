"""The kill of a whole process tree (``guardian.kill_tree``), against a tree that keeps changing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psutil

from conftest import gone, wait_until
from stoker.pool.guardian import kill_tree, live_descendants

#: A child subreaper whose descendant, in a session of its own, forks without
#: end and leaves each child an orphan at once: its pid hops for as long as
#: it lives, and every hop is re-parented to the subreaper. Each new process
#: appends its pid to the log.
HOPPING = r"""
import ctypes, os, sys, time
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)
if os.fork() == 0:
    os.setsid()
    while True:
        fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.write(fd, f"{os.getpid()}\n".encode())
        os.close(fd)
        if os.fork() != 0:
            os._exit(0)
time.sleep(600)
"""


def test_a_tree_whose_processes_fork_while_it_is_killed_is_killed_whole(tmp_path: Path) -> None:
    log = tmp_path / "hops"
    root = subprocess.Popen([sys.executable, "-c", HOPPING, str(log)])
    try:
        wait_until(lambda: log.exists() and len(log.read_text().split()) >= 20, what="the pid to hop")
        # A read of the tree may fall between two hops (one gone, the next not
        # yet re-parented): it is seen alive at some read.
        wait_until(lambda: live_descendants(root.pid), what="a live hop in the tree")
        kill_tree(root.pid)
        root.wait()
        hops = [int(pid) for pid in log.read_text().split()]
        # A hop that escaped would go on hopping, and logging new pids.
        wait_until(lambda: all(gone(pid) for pid in hops), what="every hop to end")
        assert [int(pid) for pid in log.read_text().split()] == hops
    finally:
        if root.poll() is None:
            root.kill()
            root.wait()
        _kill_escaped(str(log))


def _kill_escaped(log: str) -> None:
    """Kill whatever hops on after a failure (each hop names the log on its command line)."""
    quiet = 0
    while quiet < 100:
        hopping = [p for p in psutil.process_iter(["cmdline"]) if log in (p.info["cmdline"] or [])]
        quiet = 0 if hopping else quiet + 1
        for process in hopping:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
