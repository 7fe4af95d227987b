"""The guardian: kills the supervisor's worker process groups when the supervisor is gone.

The supervisor starts this small process (as a script, so it imports nothing
of stoker) and writes ``+PID`` when it starts a worker and ``-PID`` when the
worker has ended. Each worker leads its own process group. When the
supervisor's end of the pipe closes, because it stopped or because it was
SIGKILLed, the guardian sends SIGKILL to every worker's group still listed
(taking the tasks' own child processes with them) and exits.

The kernel's parent-death signal cannot do this alone: with forkserver a
worker's parent is the fork server, which outlives the supervisor as long as
any worker lives, and a worker killed that way would leave its task's children
behind. A thread inside the worker cannot either: a task spinning in C code
holds the GIL.
"""

import os
import signal
import sys


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
    for pid in workers:
        for kill in (os.killpg, os.kill):
            try:
                kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


if __name__ == "__main__":
    main()
