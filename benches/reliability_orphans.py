"""How long after a supervisor is SIGKILLed its last descendant is gone (goal: under 2 s).

Each round starts ``stoker worker`` with two processes, runs a task with a
child and a grandchild and a task spinning in C with the GIL held, SIGKILLs
the supervisor, and times until every process that descended from it has
exited. tests/reliability/test_rel_orphans.py checks the same without timing.

    python benches/reliability_orphans.py --rounds 20 --start-method forkserver
"""

from __future__ import annotations

import argparse
import os
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


def one_round(workdir: Path, start_method: str) -> tuple[float, int]:
    db = workdir / f"jobs-{time.time_ns()}.db"
    queue = stoker.Queue(db)
    queue.include(rel.queue)
    family, spin = workdir / f"family-{time.time_ns()}", workdir / f"spin-{time.time_ns()}"
    command = SupervisorProcess(db, "-p", "2", "--start-method", start_method)
    try:
        queue.get_task("rel.family").delay(str(family))
        queue.get_task("rel.spin_in_c").delay(str(spin))
        wait_for(lambda: family.exists() and len(family.read_text().split()) == 2 and spin.exists())
        child = psutil.Process(int(family.read_text().split()[1]))
        wait_for(child.children)
        processes = command.descendants()
        start = time.monotonic()
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
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="stoker-orphans-"))
    times = []
    for _ in range(args.rounds):
        elapsed, count = one_round(workdir, args.start_method)
        times.append(elapsed)
    print(
        f"{args.start_method}: {args.rounds} rounds of SIGKILL to the supervisor ({count} descendants each); "
        f"all gone after median {statistics.median(times) * 1000:.0f} ms, max {max(times) * 1000:.0f} ms "
        f"(goal {GOAL_S:g} s)"
    )
    return 0 if max(times) < GOAL_S else 1


if __name__ == "__main__":
    sys.exit(main())
