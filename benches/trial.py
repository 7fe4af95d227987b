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
#: How long the caller waits for a crashed task's error in quick mode: a
#: system that never reports the crash would otherwise cost the full cap.
QUICK_CRASH_CAP = 5.0
#: Systems without a per-task hard timeout: the caller's own wait stands in.
NO_HARD_TIMEOUT = {"ppe", "loky"}
#: The pure Python work of one CPU-bound task (seconds).
CPU_TASK_SECONDS = 0.020
#: Payload sizes of the large-payload scenario, by label.
PAYLOAD_SIZES = {"1mb": 2**20, "10mb": 10 * 2**20}

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

#: The plain functions behind the task names, for the executors that take functions.
FUNCTIONS: dict[str, Callable[..., Any]] = {
    "noop": plain.noop,
    "sleeper": plain.sleep_after_mark,
    "crasher": plain.crash_after_mark,
    "spin": plain.spin,
    "echo": plain.echo,
}
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
        """send(task, args) -> handle; task is one of FUNCTIONS' names."""
        self.get = get
        """get(handle, timeout) -> value, or raises."""
        self.gave_up = gave_up
        """Whether an exception from get() means the caller's own wait ran out."""
        self.send_many = send_many
        """send_many(task, calls) -> handles, in one transaction (stoker's and flexiq's map)."""


def _warm_up(client: Client) -> None:
    value = client.get(client.send("noop", (1,)), STARTUP_CAP)
    if value != 1:
        raise RuntimeError(f"warm-up job returned {value!r}")


STOKER_WORKER_COMMAND = [
    sys.executable,
    *("-m", "stoker", "worker", "bench_tasks_stoker:queue"),
    *("-p", str(PROCESSES), "--drain-timeout", "2"),
]
# flexiq's prefork children are started as "python -m flexiq.prefork", found on
# PATH: run.py puts this interpreter's directory first.
FLEXIQ_WORKER_COMMAND = [
    sys.executable,
    "-c",
    "import bench_tasks_flexiq as m; m.queue.run_worker(pool='prefork', app='bench_tasks_flexiq:queue')",
]
# huey's consumer polls the queue, from its initial delay growing by the backoff
# factor up to its maximum delay while the queue is empty (0.1 s growing to 10 s
# by default). 1 ms with no growth is as fast as it goes without busy-waiting.
HUEY_CONSUMER_COMMAND = [
    sys.executable,
    *("-m", "huey.bin.huey_consumer", "bench_tasks_huey.huey"),
    *("--workers", str(PROCESSES), "--worker-type", "process"),
    *("--delay", "0.001", "--max-delay", "0.001", "--backoff", "1"),
]


def poll_until(ready: Callable[[], bool], timeout: float) -> None:
    """Wait for ``ready()``, pausing as stoker does (0.5 ms doubling up to 50 ms).

    Raises TimeoutError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    pause = 0.0005
    while not ready():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"no result within {timeout:g} s")
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


def flexiq_get(job: Any, timeout: float) -> Any:
    """A flexiq result, polled as often as stoker's ``result()`` polls (0.5 ms up to 50 ms),
    not at flexiq's default (50 ms up to 500 ms), so that polling is not what differs."""
    return job.result(timeout=timeout, poll_interval=0.0005, max_poll_interval=0.05)


def huey_get(result: Any, timeout: float) -> Any:
    """A huey result. huey's own blocking wait starts at 50 ms; its storage is
    polled here as often as stoker's ``result()`` polls, so that polling is not
    what differs."""
    import bench_tasks_huey as tasks

    poll_until(lambda: tasks.huey.storage.has_data_for_key(result.id), timeout)
    return result.get()


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
        proc = start_background(STOKER_WORKER_COMMAND, "worker.log")
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

    def send_many(name: str, calls: list[tuple[Any, ...]]) -> list[Any]:
        return list(getattr(tasks, name).map(calls))

    client = Client(
        send=send, get=flexiq_get, gave_up=lambda exc: type(exc) is TimeoutError, send_many=send_many
    )
    proc = start_background(FLEXIQ_WORKER_COMMAND, "worker.log")
    try:
        _warm_up(client)
        yield client
    finally:
        stop_group(proc, grace=5)


@contextlib.contextmanager
def ppe_system() -> Iterator[Client]:
    from concurrent.futures import ProcessPoolExecutor

    executor = ProcessPoolExecutor(max_workers=PROCESSES)
    client = Client(
        send=lambda name, args: executor.submit(FUNCTIONS[name], *args),
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

    pool = pebble.ProcessPool(max_workers=PROCESSES)

    def send(name: str, args: tuple[Any, ...]) -> Any:
        timeout = TASK_TIMEOUT if name == "sleeper" else None
        return pool.schedule(FUNCTIONS[name], args=args, timeout=timeout)

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


@contextlib.contextmanager
def loky_system() -> Iterator[Client]:
    import loky

    def executor() -> Any:
        # loky's reusable executor replaces itself after a worker died, when
        # asked for again: what its documentation tells callers to do.
        return loky.get_reusable_executor(max_workers=PROCESSES)

    client = Client(
        send=lambda name, args: executor().submit(FUNCTIONS[name], *args),
        get=lambda future, timeout: future.result(timeout=timeout),
        gave_up=lambda exc: isinstance(exc, TimeoutError),
    )
    try:
        for future in [executor().submit(plain.noop, 1) for _ in range(4 * PROCESSES)]:
            future.result(STARTUP_CAP)
        yield client
    finally:
        kill_descendants()


@contextlib.contextmanager
def huey_system() -> Iterator[Client]:
    import bench_tasks_huey as tasks

    def send(name: str, args: tuple[Any, ...]) -> Any:
        return getattr(tasks, name)(*args)

    client = Client(send=send, get=huey_get, gave_up=lambda exc: type(exc) is TimeoutError)
    proc = start_background(HUEY_CONSUMER_COMMAND, "worker.log")
    try:
        _warm_up(client)
        yield client
    finally:
        stop_group(proc, grace=5)


SYSTEMS: dict[str, Callable[[], contextlib.AbstractContextManager[Client]]] = {
    "ppe": ppe_system,
    "pebble": pebble_system,
    "loky": loky_system,
    "huey": huey_system,
    "flexiq-map": flexiq_system,
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
        if system.endswith("-map"):
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
            client.get(handle, TASK_TIMEOUT if system in NO_HARD_TIMEOUT else RESULT_CAP)
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
        elif system in NO_HARD_TIMEOUT:
            info["caller saw"] = f"{describe(outcome)} from its own wait (no hard timeout: the task runs on)"
        elif client.gave_up(outcome):
            info["caller saw"] = f"no error within {RESULT_CAP:g} s; gave up on {describe(outcome)}"
        else:
            info["caller saw"] = describe(outcome, pid=pid)
        deadline = (mark["t"] if mark else sent) + TASK_TIMEOUT
        # ProcessPoolExecutor and loky have no hard timeout: the caller's own wait
        # ends at the send + 1 s by construction, which measures nothing about the pool.
        measured = outcome is not None and not client.gave_up(outcome) and system not in NO_HARD_TIMEOUT
        metrics["since_deadline_s"] = seen - deadline if measured else None
        metrics["since_send_deadline_s"] = seen - (sent + TASK_TIMEOUT) if measured else None
        # huey's timeout is meant to leave the worker process alive: whether it is
        # gone says nothing about huey.
        measures_kill = gone_at_error is not None and system != "huey"
        metrics["worker_gone"] = float(gone_at_error) if measures_kill else None
        next_s, next_info = _next_task(client, seen)
        metrics["next_after_error_s"] = next_s
        info["next task"] = next_info
        if system == "huey":
            # huey's timeout raises inside the task (SIGALRM): by design the
            # worker process lives on and takes the next task.
            info["worker after error"] = "the task was interrupted; its worker lives on"
        elif pid is not None and not gone_at_error:
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
    cap = QUICK_CRASH_CAP if args.quick else RESULT_CAP
    with SYSTEMS[system]() as client:
        handle = client.send("crasher", (mark_path,))
        try:
            value = client.get(handle, cap)
            seen = time.time()
            outcome: BaseException | None = None
        except BaseException as exc:
            seen = time.time()
            outcome = exc
        mark = read_mark(mark_path)
        if outcome is None:
            info["caller saw"] = f"a result: {value!r}"
        elif client.gave_up(outcome):
            info["caller saw"] = f"no error within {cap:g} s; gave up on {describe(outcome)}"
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


def _calibrate_spin(seconds: float) -> int:
    """How many rounds of ``plain.spin`` take about ``seconds`` in this process."""
    iterations = 10_000
    while True:
        elapsed = plain.spin(iterations)
        if elapsed >= 0.05:
            return max(1, round(iterations * seconds / elapsed))
        iterations *= 2


def run_cpu(system: str, args: argparse.Namespace) -> tuple[Metrics, Info]:
    """N tasks of about 20 ms of pure Python each; how much of the pool's time they get."""
    n = args.n
    iterations = _calibrate_spin(CPU_TASK_SECONDS)
    with SYSTEMS[system]() as client:
        t0 = time.perf_counter()
        if system.endswith("-map"):
            assert client.send_many is not None
            handles = client.send_many("spin", [(iterations,)] * n)
        else:
            handles = [client.send("spin", (iterations,)) for _ in range(n)]
        task_seconds = sum(client.get(handle, RESULT_CAP) for handle in handles)
        wall = time.perf_counter() - t0
    capacity = PROCESSES * wall
    metrics: Metrics = {
        "efficiency": task_seconds / capacity,
        "overhead_per_task_s": (capacity - task_seconds) / n,
        "task_s": task_seconds / n,
        "wall_s": wall,
    }
    return metrics, {"n": str(n)}


def run_payload(system: str, args: argparse.Namespace) -> tuple[Metrics, Info]:
    """1 MB and 10 MB of bytes as the argument and back as the result, one job at a time."""
    metrics: Metrics = {}
    with SYSTEMS[system]() as client:
        for label, size in PAYLOAD_SIZES.items():
            # Random bytes, so that no layer can shrink them by compressing.
            data = os.urandom(size)
            rounds = args.n if size <= 2**20 else max(3, args.n // 4)
            times = []
            for _ in range(rounds):
                t0 = time.perf_counter()
                echoed = client.get(client.send("echo", (data,)), RESULT_CAP)
                times.append(time.perf_counter() - t0)
                if echoed != data:
                    raise RuntimeError(f"the {label} payload came back changed")
            times.sort()
            median = times[len(times) // 2]
            metrics[f"rt_{label}_s"] = median
            # The payload crosses twice: as the argument and as the result.
            metrics[f"mb_per_s_{label}"] = 2 * size / 2**20 / median
    return metrics, {"n": str(args.n)}


# --- scale: a backlog of pending jobs ------------------------------------------------

#: Engine claims timed one at a time in the scale scenario.
SCALE_CLAIMS = 1000
#: Jobs whose drain through the pool is timed in the scale scenario.
SCALE_WINDOW = {True: 2000, False: 5000}
#: The timed drain stops early once it has taken this long (seconds).
SCALE_DRAIN_BUDGET = {True: 5.0, False: 60.0}
#: Filling the backlog gives up when it would take longer than this (seconds).
SCALE_FILL_BUDGET = {True: 30.0, False: 300.0}
#: Seconds of filling before a peer's pace is trusted to project the whole fill.
FILL_SETTLE = 2.0
#: Jobs sent per call while filling the backlog.
FILL_CHUNK = 10_000

SCALE_WORKERS = {
    "stoker-cli": STOKER_WORKER_COMMAND,
    "flexiq-map": FLEXIQ_WORKER_COMMAND,
    "huey": HUEY_CONSUMER_COMMAND,
}


def peak_rss_bytes(pid: int) -> float | None:
    """The kernel's high-water mark of the process's resident memory (VmHWM), if readable."""
    with contextlib.suppress(OSError, ValueError), open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) * 1024
    return None


def _fill(
    system: str, total: int, keep: int, budget: float
) -> tuple[list[Any], float, tuple[str, str] | None]:
    """Send ``total`` no-op jobs with nothing consuming them; the first ``keep`` handles.

    The first ``keep`` jobs are the ones timed later; they go through each
    system's public send: stoker's and flexiq's ``map``, huey's call one at a
    time (it has no batch send). The backlog behind them is sent the same way,
    except stoker's, which goes straight to its engine (copies of the first
    job, ``Engine.enqueue`` in batches, about 3 times as fast as ``map``), so
    that a million jobs fit in the quick mode. Returns the handles, the seconds
    the fill took, and, if it gave up (a peer only) because it would take
    longer than ``budget``, why and the projection.
    """
    if system == "stoker-cli":
        import bench_tasks_stoker as stoker_tasks

        def send_chunk(calls: list[tuple[Any, ...]]) -> list[Any]:
            return list(stoker_tasks.noop.map(calls))

    elif system == "flexiq-map":
        import bench_tasks_flexiq as flexiq_tasks

        def send_chunk(calls: list[tuple[Any, ...]]) -> list[Any]:
            return list(flexiq_tasks.noop.map(calls))

    else:
        import bench_tasks_huey as huey_tasks

        def send_chunk(calls: list[tuple[Any, ...]]) -> list[Any]:
            return [huey_tasks.noop(*call) for call in calls]

    kept: list[Any] = []
    t0 = time.perf_counter()
    sent = 0
    while sent < total:
        count = min(FILL_CHUNK, total - sent)
        if system != "stoker-cli":
            handles = send_chunk([(i,) for i in range(sent, sent + count)])
            kept.extend(handles[: max(0, keep - len(kept))])
        elif len(kept) < keep:
            count = min(count, keep - len(kept))
            kept.extend(send_chunk([(i,) for i in range(sent, sent + count)]))
        else:
            _enqueue_copies(kept[0], count)
        sent += count
        now = time.perf_counter()
        # stoker is what is measured: its fill is bounded only by the trial's
        # timeout. A peer's is projected at its average pace so far, once that
        # has settled (2 s in).
        if system == "stoker-cli" or now - t0 < FILL_SETTLE:
            continue
        pace = sent / (now - t0)
        projected = (now - t0) * total / sent
        if sent < total and projected > budget:
            why = f"filling {total:,} jobs would take longer than the budget of {budget:g} s"
            return kept, now - t0, (why, f"{projected:,.0f} s at {pace:,.0f} sends/s")
    return kept, time.perf_counter() - t0, None


def _enqueue_copies(job: Any, count: int) -> None:
    """Enqueue ``count`` copies of a stoker job (same task, payload and options) in one transaction."""
    from stoker._core import Engine, NewJob

    engine = Engine(os.environ["BENCH_DB"])
    record = engine.get(job.id)
    copy = NewJob(
        record.task_name,
        record.payload,
        queue=record.queue,
        max_retries=record.max_retries,
        max_crashes=record.max_crashes,
    )
    engine.enqueue([copy] * count)


def _claim_rate(count: int) -> tuple[float, list[tuple[int, int]]]:
    """Claims per second of stoker's engine alone, one job per claim; the claimed (id, token)s."""
    from stoker._core import Engine

    engine = Engine(os.environ["BENCH_DB"])
    claimed: list[tuple[int, int]] = []
    t0 = time.perf_counter()
    for _ in range(count):
        for job in engine.claim(["default"], 1, "bench-claim", 600_000):
            claimed.append((job.id, job.token))
    elapsed = time.perf_counter() - t0
    # Finish them outside the timing, so the pool starts on a backlog of pending jobs.
    for job_id, token in claimed:
        engine.complete(job_id, token, None)
    return len(claimed) / elapsed, claimed


def run_scale(system: str, args: argparse.Namespace) -> tuple[Metrics, Info]:
    """A pool started on a backlog of N pending jobs: how fast it drains the first ones."""
    backlog = args.n
    window = SCALE_WINDOW[args.quick]
    claims = SCALE_CLAIMS if system == "stoker-cli" else 0
    # More than N are sent, so that N are still pending while the last timed job runs.
    total = backlog + claims + window
    metrics: Metrics = {}
    info: Info = {"n": str(backlog)}
    handles, fill_s, skipped = _fill(system, total, claims + window, SCALE_FILL_BUDGET[args.quick])
    if skipped:
        info["skipped"], info["projection"] = skipped
        return metrics, info
    metrics["fill_per_s"] = total / fill_s
    if claims:
        metrics["claim_per_s"], _ = _claim_rate(claims)
        handles = handles[claims:]
    proc = start_background(SCALE_WORKERS[system], "worker.log")
    try:
        wait = _result_waiter(system)
        # Results are awaited in the order the jobs were sent, which is the
        # order every system here runs them in, each wait starting once the
        # previous result is in; huey hands a result over only once.
        wait(handles[0], STARTUP_CAP)
        t_first = time.perf_counter()
        budget = SCALE_DRAIN_BUDGET[args.quick]
        received = 1
        for handle in handles[1:]:
            wait(handle, RESULT_CAP)
            received += 1
            if time.perf_counter() - t_first > budget:
                break
        t_last = time.perf_counter()
        metrics["drain_per_s"] = (received - 1) / (t_last - t_first)
        metrics["supervisor_peak_rss_bytes"] = peak_rss_bytes(proc.pid)
    finally:
        stop_group(proc, grace=5)
    info["drained"] = str(received)
    return metrics, info


def _result_waiter(system: str) -> Callable[[Any, float], Any]:
    """How to wait for one result of a job sent by ``_fill``, without starting any workers."""
    if system == "stoker-cli":
        return lambda job, timeout: job.result(timeout=timeout)
    if system == "flexiq-map":
        return flexiq_get
    return huey_get


SCENARIOS: dict[str, Callable[[str, argparse.Namespace], tuple[Metrics, Info]]] = {
    "latency": run_latency,
    "noop": run_noop,
    "timeout": run_timeout,
    "crash": run_crash,
    "cpu": run_cpu,
    "payload": run_payload,
    "scale": run_scale,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("system", choices=sorted(SYSTEMS))
    parser.add_argument("--n", type=int, default=1000, help="number of tasks, or of pending jobs (scale)")
    parser.add_argument("--quick", action="store_true", help="the smaller sizes of the quick mode")
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
