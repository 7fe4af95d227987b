"""How long after a supervisor is SIGKILLed (or stopped) its last descendant is gone (goal: under 2 s).

Each round starts ``stoker worker`` with four processes, runs a task with a
child and a grandchild, a task spinning in C with the GIL held, and two tasks
whose descendants escaped their worker's session (a ``setsid`` child, a
double-forked daemon), SIGKILLs the supervisor (``--stop``: SIGTERM, with no
drain time), and times until every one of those processes has exited.
tests/reliability/test_rel_orphans.py and tests/pool/test_descendants.py check the
same without timing.

    python benches/reliability_orphans.py --rounds 20 --start-method forkserver [--stop]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault(
    "STOKER_TEST_DB", os.path.join(tempfile.mkdtemp(prefix="stoker-orphans-apps-"), "apps.db")
)

import psutil  # noqa: E402

import stoker  # noqa: E402
from apps import reliability as rel  # noqa: E402
from reliability.harness import SupervisorProcess, all_gone  # noqa: E402

GOAL_S = 2.0


def wait_for(predicate: object, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError("gave up waiting")
        time.sleep(0.005)


def one_round(workdir: Path, start_method: str, stop: bool) -> tuple[float, int]:
    db = workdir / f"jobs-{time.time_ns()}.db"
    queue = stoker.Queue(db)
    queue.include(rel.queue)
    family, spin = workdir / f"family-{time.time_ns()}", workdir / f"spin-{time.time_ns()}"
    escaped = [workdir / f"{kind}-{time.time_ns()}" for kind in ("setsid", "daemon")]
    command = SupervisorProcess(db, "-p", "4", "--start-method", start_method, "--drain-timeout", "0")
    try:
        queue.get_task("rel.family").delay(str(family))
        queue.get_task("rel.spin_in_c").delay(str(spin))
        for kind, marker in zip(("setsid", "daemon"), escaped, strict=True):
            queue.get_task("rel.leave_behind").delay(kind, str(marker), str(workdir / "never"))
        wait_for(lambda: family.exists() and len(family.read_text().split()) == 2 and spin.exists())
        wait_for(lambda: all(marker.exists() and marker.read_text() for marker in escaped))
        child = psutil.Process(int(family.read_text().split()[1]))
        wait_for(child.children)
        processes = command.descendants()
        known = {process.pid for process in processes}
        for marker in escaped:
            pid = int(marker.read_text().split()[1])
            if pid not in known:
                processes.append(psutil.Process(pid))
        start = time.monotonic()
        if stop:
            command.process.send_signal(signal.SIGTERM)
        else:
            command.kill()
        wait_for(lambda: all_gone(processes))
        return time.monotonic() - start, len(processes)
    finally:
        command.close()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--start-method", choices=["forkserver", "spawn"], default="forkserver")
    parser.add_argument("--stop", action="store_true", help="SIGTERM the supervisor instead of SIGKILL")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="stoker-orphans-"))
    times = []
    for _ in range(args.rounds):
        elapsed, count = one_round(workdir, args.start_method, args.stop)
        times.append(elapsed)
    sent = "SIGTERM" if args.stop else "SIGKILL"
    print(
        f"{args.start_method}: {args.rounds} rounds of {sent} to the supervisor ({count} descendants each); "
        f"all gone after median {statistics.median(times) * 1000:.0f} ms, max {max(times) * 1000:.0f} ms "
        f"(goal {GOAL_S:g} s)"
    )
    return 0 if max(times) < GOAL_S else 1


if __name__ == "__main__":
    sys.exit(main())
