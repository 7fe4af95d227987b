"""One benchmark trial: one scenario, one system, in this (fresh) process.

Run by ``benches/run.py`` as ``python benches/trial.py SCENARIO SYSTEM --n N``
in a fresh temporary directory, with ``BENCH_DB`` naming a fresh database in
it. Prints one JSON line on stdout::

    {"scenario": ..., "system": ..., "metrics": {name: number or null},
     "info": {name: text}, "error": text or null}

A metric is null when it could not be measured in this trial (the caller gave
up waiting, say); ``info`` says why. Every process this trial started is
killed before it exits.

To add a scenario: write ``run_<scenario>(system, args)`` returning
``(metrics, info)``, add it to ``SCENARIOS``, and describe its metrics in
``run.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import bench_tasks_plain as plain
import psutil

#: Worker processes of every system.
PROCESSES = 2
#: How long the caller waits for any one result before giving up (seconds).
RESULT_CAP = 30.0
#: How long a system gets to start its workers and run a first job.
STARTUP_CAP = 60.0
#: The hard timeout under test (seconds).
TASK_TIMEOUT = 1.0

Metrics = dict[str, float | None]
Info = dict[str, str]


# --- utilities -----------------------------------------------------------------


UUID = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b")


def describe(exc: BaseException, limit: int = 300, pid: int | None = None) -> str:
    """``Type: message`` on one line, cut to ``limit`` characters.

    The task's ``pid`` and any UUID (a job id) are replaced by ``{pid}`` and
    ``{id}``, so that the same outcome reads the same in every trial.
    """
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    exitcode = getattr(exc, "exitcode", None)  # pebble's ProcessExpired
    if exitcode is not None:
        text += f" (exitcode={exitcode})"
    text = UUID.sub("{id}", text.replace("\n", " ").strip())
    if pid is not None:
        text = re.sub(rf"\b{pid}\b", "{pid}", text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def read_mark(path: str, wait: float = 2.0) -> dict[str, Any] | None:
    """The ``{"pid", "t"}`` a task wrote when it started, if it did (waits up to ``wait`` s)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            with open(path) as f:
                mark: dict[str, Any] = json.load(f)
                return mark
        except (FileNotFoundError, json.JSONDecodeError):
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.005)


def process_gone(pid: int) -> bool:
    """Whether the process has exited (a zombie waiting to be reaped counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def seconds_until_gone(pid: int, wait: float) -> float | None:
    """Seconds until the process is gone, polling up to ``wait`` s; None if still alive."""
    start = time.monotonic()
    while not process_gone(pid):
        if time.monotonic() - start >= wait:
            return None
        time.sleep(0.01)
    return time.monotonic() - start


def start_background(command: list[str], log_name: str) -> subprocess.Popen[bytes]:
    """Start a worker command in its own process group, its output to a log file here."""
    log = open(log_name, "wb")  # noqa: SIM115 - closed with the process group at exit
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def stop_group(proc: subprocess.Popen[bytes], grace: float) -> None:
    """Stop a worker command: SIGTERM its process group, give it and every process
    it started ``grace`` seconds to exit on their own, then SIGKILL what is left."""
    try:
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(grace)
    # Those that outlive the command are orphans reaped by another process:
    # poll them, a zombie counts as gone.
    while any(not process_gone(p.pid) for p in tree) and time.monotonic() < deadline:
        time.sleep(0.01)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    for p in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            if not process_gone(p.pid):
                p.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


def kill_descendants() -> None:
    """SIGKILL every process this one started, directly or not, and reap them."""
    children = psutil.Process().children(recursive=True)
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    psutil.wait_procs(children, timeout=5)


# --- systems ---------------------------------------------------------------------
#
# Each system is a context manager yielding a Client: how to send the tasks of
# the scenarios and how to wait for a result, with the workers already started
# and warmed up (one job has made the round trip).


class Client:
    """What a scenario needs from a system."""

    def __init__(
        self,
        send: Callable[[str, tuple[Any, ...]], Any],
        get: Callable[[Any, float], Any],
        gave_up: Callable[[BaseException], bool],
        send_many: Callable[[str, list[tuple[Any, ...]]], list[Any]] | None = None,
    ) -> None:
        self.send = send
        """send(task, args) -> handle; task is noop, sleeper or crasher."""
        self.get = get
        """get(handle, timeout) -> value, or raises."""
        self.gave_up = gave_up
        """Whether an exception from get() means the caller's own wait ran out."""
        self.send_many = send_many
        """send_many(task, calls) -> handles, in one transaction (stoker's map)."""


def _warm_up(client: Client) -> None:
    value = client.get(client.send("noop", (1,)), STARTUP_CAP)
    if value != 1:
        raise RuntimeError(f"warm-up job returned {value!r}")


@contextlib.contextmanager
def stoker_system(in_process: bool) -> Iterator[Client]:
    import bench_tasks_stoker as tasks

    import stoker

    def send(name: str, args: tuple[Any, ...]) -> Any:
        return getattr(tasks, name).delay(*args)

    def send_many(name: str, calls: list[tuple[Any, ...]]) -> list[Any]:
        return list(getattr(tasks, name).map(calls))

    client = Client(
        send=send,
        get=lambda job, timeout: job.result(timeout=timeout),
        gave_up=lambda exc: isinstance(exc, stoker.ResultTimeoutError),
        send_many=send_many,
    )
    if in_process:
        pool = tasks.queue.start_worker(processes=PROCESSES, drain_timeout=2)
        try:
            if not pool.wait_started(STARTUP_CAP) or pool.error is not None:
                raise RuntimeError(f"stoker workers did not start: {pool.error!r}")
            _warm_up(client)
            yield client
        finally:
            pool.stop(timeout=10)
    else:
        command = [sys.executable, "-m", "stoker", "worker", "bench_tasks_stoker:queue"]
        proc = start_background([*command, "-p", str(PROCESSES), "--drain-timeout", "2"], "worker.log")
        try:
            _warm_up(client)
            yield client
        finally:
            stop_group(proc, grace=10)


@contextlib.contextmanager
def flexiq_system() -> Iterator[Client]:
    import bench_tasks_flexiq as tasks

    def send(name: str, args: tuple[Any, ...]) -> Any:
        return getattr(tasks, name).delay(*args)

    def get(job: Any, timeout: float) -> Any:
        # Poll as often as stoker's result() does (from 0.5 ms up to 50 ms), not
        # flexiq's default (50 ms up to 500 ms), so that polling is not what differs.
        return job.result(timeout=timeout, poll_interval=0.0005, max_poll_interval=0.05)

    client = Client(send=send, get=get, gave_up=lambda exc: type(exc) is TimeoutError)
    # Its prefork children are started as "python -m flexiq.prefork", found on
    # PATH: run.py puts this interpreter's directory first.
    app = "bench_tasks_flexiq:queue"
    code = f"import bench_tasks_flexiq as m; m.queue.run_worker(pool='prefork', app={app!r})"
    proc = start_background([sys.executable, "-c", code], "worker.log")
    try:
        _warm_up(client)
        yield client
    finally:
        stop_group(proc, grace=5)


@contextlib.contextmanager
def ppe_system() -> Iterator[Client]:
    from concurrent.futures import ProcessPoolExecutor

    functions = {"noop": plain.noop, "sleeper": plain.sleep_after_mark, "crasher": plain.crash_after_mark}
    executor = ProcessPoolExecutor(max_workers=PROCESSES)
    client = Client(
        send=lambda name, args: executor.submit(functions[name], *args),
        get=lambda future, timeout: future.result(timeout=timeout),
        gave_up=lambda exc: isinstance(exc, TimeoutError),
    )
    try:
        for future in [executor.submit(plain.noop, 1) for _ in range(4 * PROCESSES)]:
            future.result(STARTUP_CAP)
        yield client
    finally:
        # A worker may still be sleeping: kill it rather than wait for it.
        kill_descendants()
        executor.shutdown(wait=False, cancel_futures=True)


@contextlib.contextmanager
def pebble_system() -> Iterator[Client]:
    import pebble

    functions = {"noop": plain.noop, "sleeper": plain.sleep_after_mark, "crasher": plain.crash_after_mark}
    pool = pebble.ProcessPool(max_workers=PROCESSES)

    def send(name: str, args: tuple[Any, ...]) -> Any:
        timeout = TASK_TIMEOUT if name == "sleeper" else None
        return pool.schedule(functions[name], args=args, timeout=timeout)

    def gave_up(exc: BaseException) -> bool:
        # pebble's own timeout error is TimeoutError("Task timeout", 1); the
        # caller's wait running out raises a TimeoutError without arguments.
        return isinstance(exc, TimeoutError) and not exc.args

    client = Client(
        send=send,
        get=lambda future, timeout: future.result(timeout=timeout),
        gave_up=gave_up,
    )
    try:
        for future in [pool.schedule(plain.noop, args=(1,)) for _ in range(4 * PROCESSES)]:
            future.result(STARTUP_CAP)
        yield client
    finally:
        kill_descendants()
        pool.stop()
        with contextlib.suppress(Exception):
            pool.join(timeout=5)


SYSTEMS: dict[str, Callable[[], contextlib.AbstractContextManager[Client]]] = {
    "ppe": ppe_system,
    "pebble": pebble_system,
    "stoker": lambda: stoker_system(in_process=True),
    "stoker-map": lambda: stoker_system(in_process=True),
    "stoker-cli": lambda: stoker_system(in_process=False),
    "flexiq": flexiq_system,
}


# --- scenarios ---------------------------------------------------------------------


def run_noop(system: str, args: argparse.Namespace) -> tuple[Metrics, Info]:
    """N no-op tasks sent while the pool consumes; enqueue and end-to-end rates."""
    n = args.n
    calls = [(i,) for i in range(n)]
    with SYSTEMS[system]() as client:
        t0 = time.perf_counter()
        if system == "stoker-map":
            assert client.send_many is not None
            handles = client.send_many("noop", calls)
        else:
            handles = [client.send("noop", call) for call in calls]
        t1 = time.perf_counter()
        total = 0
        for handle in handles:
            total += client.get(handle, RESULT_CAP)
        t2 = time.perf_counter()
    if total != n * (n - 1) // 2:
        raise RuntimeError(f"wrong sum of results: {total}")
    metrics: Metrics = {
        "enqueue_per_s": n / (t1 - t0),
        "e2e_per_s": n / (t2 - t0),
        "enqueue_s": t1 - t0,
        "e2e_s": t2 - t0,
    }
    return metrics, {"n": str(n)}


def _next_task(client: Client, since: float) -> tuple[float | None, str]:
    """Send a no-op right away; seconds from ``since`` to its result, or what went wrong."""
    try:
        value = client.get(client.send("noop", (7,)), RESULT_CAP)
    except BaseException as exc:
        return None, describe(exc)
    if value != 7:
        return None, f"wrong result {value!r}"
    return time.time() - since, "ran"


def run_timeout(system: str, args: argparse.Namespace) -> tuple[Metrics, Info]:
    """A task that sleeps 60 s under a 1 s hard timeout."""
    mark_path = os.path.abspath("sleeper.json")
    metrics: Metrics = {}
    info: Info = {}
    with SYSTEMS[system]() as client:
        sent = time.time()
        handle = client.send("sleeper", (mark_path,))
        try:
            client.get(handle, TASK_TIMEOUT if system == "ppe" else RESULT_CAP)
            seen = time.time()
            outcome: BaseException | None = None
        except BaseException as exc:
            seen = time.time()
            outcome = exc
        mark = read_mark(mark_path)
        pid = mark["pid"] if mark else None
        gone_at_error = process_gone(pid) if pid is not None else None
        if outcome is None:
            info["caller saw"] = "a result (no timeout)"
        elif system == "ppe":
            info["caller saw"] = f"{describe(outcome)} from its own wait (no hard timeout: the task runs on)"
        elif client.gave_up(outcome):
            info["caller saw"] = f"no error within {RESULT_CAP:g} s; gave up on {describe(outcome)}"
        else:
            info["caller saw"] = describe(outcome, pid=pid)
        deadline = (mark["t"] if mark else sent) + TASK_TIMEOUT
        # ProcessPoolExecutor has no hard timeout: its caller's own wait ends at
        # the send + 1 s by construction, which measures nothing about the pool.
        measured = outcome is not None and not client.gave_up(outcome) and system != "ppe"
        metrics["since_deadline_s"] = seen - deadline if measured else None
        metrics["since_send_deadline_s"] = seen - (sent + TASK_TIMEOUT) if measured else None
        metrics["worker_gone"] = None if gone_at_error is None else float(gone_at_error)
        next_s, next_info = _next_task(client, seen)
        metrics["next_after_error_s"] = next_s
        info["next task"] = next_info
        if pid is not None and not gone_at_error:
            later = seconds_until_gone(pid, 3.0)
            info["worker after error"] = (
                "still running 3 s later" if later is None else f"gone {later:.2f} s after the error"
            )
        elif pid is not None:
            info["worker after error"] = "gone"
        else:
            info["worker after error"] = "the task never started"
    return metrics, info


def run_crash(system: str, args: argparse.Namespace) -> tuple[Metrics, Info]:
    """A task whose process exits with os._exit(1)."""
    mark_path = os.path.abspath("crasher.json")
    metrics: Metrics = {}
    info: Info = {}
    with SYSTEMS[system]() as client:
        handle = client.send("crasher", (mark_path,))
        try:
            value = client.get(handle, RESULT_CAP)
            seen = time.time()
            outcome: BaseException | None = None
        except BaseException as exc:
            seen = time.time()
            outcome = exc
        mark = read_mark(mark_path)
        if outcome is None:
            info["caller saw"] = f"a result: {value!r}"
        elif client.gave_up(outcome):
            info["caller saw"] = f"no error within {RESULT_CAP:g} s; gave up on {describe(outcome)}"
        else:
            info["caller saw"] = describe(outcome, pid=mark["pid"] if mark else None)
        got_error = outcome is not None and not client.gave_up(outcome)
        metrics["since_death_s"] = seen - mark["t"] if got_error and mark else None
        next_s, next_info = _next_task(client, seen)
        metrics["next_after_error_s"] = next_s
        info["next task"] = next_info
    return metrics, info


def run_latency(system: str, args: argparse.Namespace) -> tuple[Metrics, Info]:
    """One no-op at a time through a warm idle pool: send-to-result times."""
    n = args.n
    times: list[float] = []
    # stoker only: from the moment the job's outcome was stored to the result in
    # the caller's hands, which is what waiting for a result costs.
    waits: list[float] = []
    with SYSTEMS[system]() as client:
        for i in range(n):
            t0 = time.perf_counter()
            handle = client.send("noop", (i,))
            value = client.get(handle, RESULT_CAP)
            received = time.time()
            times.append(time.perf_counter() - t0)
            if value != i:
                raise RuntimeError(f"job {i} returned {value!r}")
            if system.startswith("stoker"):
                finished_ms = handle.record().finished_ms
                waits.append(max(0.0, received - finished_ms / 1000))
    times.sort()
    metrics: Metrics = {
        "p50_s": times[len(times) // 2],
        "p99_s": times[min(len(times) - 1, (len(times) * 99) // 100)],
        "max_s": times[-1],
    }
    if waits:
        waits.sort()
        metrics["wait_p50_s"] = waits[len(waits) // 2]
        metrics["wait_p99_s"] = waits[min(len(waits) - 1, (len(waits) * 99) // 100)]
    return metrics, {"n": str(n)}


SCENARIOS: dict[str, Callable[[str, argparse.Namespace], tuple[Metrics, Info]]] = {
    "latency": run_latency,
    "noop": run_noop,
    "timeout": run_timeout,
    "crash": run_crash,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("system", choices=sorted(SYSTEMS))
    parser.add_argument("--n", type=int, default=1000, help="number of tasks (noop)")
    args = parser.parse_args()
    result: dict[str, Any] = {"scenario": args.scenario, "system": args.system, "error": None}
    try:
        metrics, info = SCENARIOS[args.scenario](args.system, args)
        result["metrics"], result["info"] = metrics, info
    except BaseException as exc:
        result["metrics"], result["info"] = {}, {}
        result["error"] = describe(exc, 1000)
        traceback.print_exc()
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    kill_descendants()
    # Skip interpreter shutdown: executors' exit hooks would wait for workers.
    os._exit(0)


if __name__ == "__main__":
    main()
