"""Benchmarks of stoker against ProcessPoolExecutor, pebble, loky, flexiq and huey.

Usage (from the repository root)::

    .venv/bin/python benches/run.py            # full run, prints markdown tables
    .venv/bin/python benches/run.py --quick    # 3 repetitions, small N
    .venv/bin/python benches/run.py --quick --write   # and rewrite docs/benchmarks.md and its plots

Every trial (one scenario, one system) runs in a fresh subprocess
(``benches/trial.py``) in a fresh temporary directory with a fresh database,
bounded by a timeout; its process group and every process it left behind are
killed when it ends. The order of the systems alternates between
repetitions. Each system runs 2 worker processes.

To add a scenario: a ``run_<name>`` function in ``trial.py`` and a
``Scenario`` entry in ``SCENARIOS`` below.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import importlib.metadata
import json
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

BENCHES = Path(__file__).resolve().parent
ROOT = BENCHES.parent
DOC = ROOT / "docs" / "benchmarks.md"

DASH = "\u2013"
TIMES = "\u00d7"

NAMES = {
    "ppe": "ProcessPoolExecutor",
    "pebble": "pebble ProcessPool",
    "loky": "loky reusable executor",
    "stoker": "stoker",
    "stoker-map": "stoker, `map`",
    "stoker-cli": "stoker, `stoker worker` process",
    "flexiq": "flexiq prefork",
    "flexiq-map": "flexiq prefork, `map`",
    "huey": "huey, SQLite, process workers",
}
#: Every system that runs one task at a time through its ordinary send.
EVERY_SYSTEM = ["ppe", "pebble", "loky", "stoker", "stoker-cli", "flexiq", "huey"]
#: The same without stoker's separate worker process, where it would only repeat the in-caller pool.
EVERY_PEER_AND_STOKER = [s for s in EVERY_SYSTEM if s != "stoker-cli"]
#: The systems that can hold a backlog of pending jobs in a database.
BACKLOG_SYSTEMS = ["stoker-cli", "flexiq-map", "huey"]


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    kind: str
    """rate (per second), seconds, fraction (of trials where it was true),
    number (a plain quantity), bytes, or mb_rate (MiB per second)."""
    higher_is_better: bool = False
    compared: bool = True
    """Whether the ratio table compares it (not for what describes the setup)."""


@dataclass(frozen=True)
class Scenario:
    name: str
    """The scenario's name on the command line (``--scenarios``)."""
    title: str
    description: str
    systems: list[str]
    metrics: list[Metric]
    info_keys: list[str] = field(default_factory=list)
    baselines: list[str] = field(default_factory=list)
    """Systems the others are compared with in the ratio table."""
    ratio_rows: list[str] = field(default_factory=list)
    n_quick: int | None = None
    n_full: int | None = None
    trial_timeout: float = 120.0
    seconds_per_n: float = 0.01
    """How much longer a trial may take for each unit of N."""
    trial: str = ""
    """The ``run_<trial>`` function of ``trial.py`` (default: the name)."""
    plot: str = ""
    """The file name, in docs/, of the plot shown under the tables."""

    def n(self, quick: bool) -> int | None:
        return self.n_quick if quick else self.n_full

    def timeout(self, quick: bool) -> float:
        n = self.n(quick) or 0
        return self.trial_timeout + n * self.seconds_per_n

    @property
    def trial_name(self) -> str:
        return self.trial or self.name


SCALE_DESCRIPTION = (
    "The queue is filled with {label} pending no-op jobs plus the ones the measurement "
    "consumes, with no worker running; then the pool starts. *Drain* is the rate at "
    "which its results come in, from the first job's result to the last one of a window "
    "of the first 2,000 jobs (5,000 in the full mode), or of as many as arrive within "
    "5 s (60 s in the full mode); results are awaited in the order sent. *Engine claims* "
    "(stoker only) is the rate of `Engine.claim` alone, one job per claim as a supervisor "
    "with one idle slot claims, over 1,000 claims timed before the pool starts. "
    "*Supervisor peak RSS* is the high-water mark of the resident memory (VmHWM) of the "
    "process that claims or hands out the jobs: `stoker worker`, flexiq's worker process, "
    "huey's consumer. *Fill* is how fast the backlog was sent: stoker's timed jobs with "
    "`map`, the rest straight to its engine (`Engine.enqueue` of copies of the first "
    "job, in batches of 10,000); flexiq with `map` in batches of 10,000; huey one call "
    "at a time (it has no batch send). A peer's fill that would take longer than 30 s (300 s in "
    "the full mode), projected at its average pace after 2 s, is given up, and the peer "
    "is skipped at that size; stoker's is never given up. "
    "ProcessPoolExecutor, pebble and loky hold their backlog in the caller's memory, "
    "not in a database, and are not run here."
)
SCALE_AGAIN = "As in the section above, with {label} pending jobs."


def scale_scenario(name: str, backlog: int, label: str, first: bool, plot: str = "") -> Scenario:
    """One backlog size; the first one's section describes them all."""
    return Scenario(
        name=name,
        title=f"Scale: a pool started on {label} pending jobs",
        description=SCALE_DESCRIPTION.format(label=label) if first else SCALE_AGAIN.format(label=label),
        systems=BACKLOG_SYSTEMS,
        metrics=[
            Metric("drain_per_s", "drain (jobs/s)", "rate", higher_is_better=True),
            Metric("claim_per_s", "engine claims (claims/s)", "rate", higher_is_better=True),
            Metric("supervisor_peak_rss_bytes", "supervisor peak RSS", "bytes"),
            Metric("fill_per_s", "fill (jobs/s)", "rate", higher_is_better=True, compared=False),
        ],
        baselines=["flexiq-map", "huey"],
        ratio_rows=["stoker-cli"],
        n_quick=backlog,
        n_full=backlog,
        trial_timeout=150.0,
        seconds_per_n=0.0004,
        trial="scale",
        plot=plot,
    )


SCENARIOS = [
    Scenario(
        name="noop",
        title="No-op tasks: throughput",
        description=(
            "N no-op tasks (`def noop(i): return i`) sent one by one while the pool consumes, "
            "then every result collected in order. *Enqueue* is N divided by the time the "
            "sends took; *end to end* is N divided by the time from the first send to the "
            "last result in the caller's hands. Measured once the workers are up (a first job "
            "has made the round trip). stoker runs its pool on a thread of the caller "
            "(`queue.start_worker(processes=2)`), sends with `task.delay()` (one transaction "
            "per job) or `task.map()` (one transaction for all N: the batch send), or runs its "
            "pool in a separate `stoker worker -p 2` process. flexiq sends with `delay()` or "
            "its own `map()` (one batch). ProcessPoolExecutor, pebble and loky use "
            "`submit`/`schedule` and futures; huey calls the task, which enqueues it."
        ),
        systems=[
            "ppe",
            "pebble",
            "loky",
            "stoker",
            "stoker-map",
            "stoker-cli",
            "flexiq",
            "flexiq-map",
            "huey",
        ],
        metrics=[
            Metric("enqueue_per_s", "enqueue (sends/s)", "rate", higher_is_better=True),
            Metric("e2e_per_s", "end to end (jobs/s)", "rate", higher_is_better=True),
        ],
        baselines=["ppe", "flexiq", "huey"],
        ratio_rows=["stoker", "stoker-map", "stoker-cli"],
        n_quick=1000,
        n_full=20000,
        trial_timeout=90.0,
        plot="bench-throughput.png",
    ),
    Scenario(
        name="cpu",
        title="CPU-bound: 200 tasks of about 20 ms of pure Python",
        description=(
            "N tasks, each a pure Python loop calibrated in the caller to take about 20 ms; "
            "the task measures its own loop with `time.perf_counter` and returns the seconds. "
            "All N are sent at once, then every result collected. *Efficiency* is the sum of "
            "the tasks' own times divided by 2 workers times the wall time from the first send to "
            "the last result: 1 would mean the workers did nothing but the tasks. *Overhead* "
            "is (2 workers times the wall time, less the tasks' time) / N. On this machine the "
            "caller and the supervisor share the 2 cores with the workers, which shows here."
        ),
        systems=EVERY_PEER_AND_STOKER,
        metrics=[
            Metric("efficiency", "efficiency", "number", higher_is_better=True),
            Metric("overhead_per_task_s", "overhead per task", "seconds"),
            Metric("task_s", "task's own time", "seconds", compared=False),
        ],
        baselines=["ppe", "flexiq", "huey"],
        ratio_rows=["stoker"],
        n_quick=200,
        n_full=200,
        trial_timeout=120.0,
    ),
    Scenario(
        name="latency",
        title="Latency: one task at a time through a warm idle pool",
        description=(
            "N no-op tasks, each sent only after the previous result is in the caller's hands, "
            "so the pool is idle and warm when each arrives; the time from the send to the "
            "result, p50, p99 and max. stoker runs its pool on a thread of the caller "
            "(a result wakes the waiter through the supervisor) or in a separate "
            "`stoker worker` process (the waiter notices the result through the database's "
            "change counter, checked every 0.2 ms for the first 0.1 s of a wait; a send wakes "
            "that process's supervisor through a FIFO). "
            "*Stored to received* (stoker only) is the time from the job's outcome being "
            "stored (its `finished_ms`, a whole millisecond) to the result in the caller's hands; "
            "`benches/wait_cost.py` measures the same to the microsecond (docs/wait-cost.md)."
        ),
        systems=EVERY_SYSTEM,
        metrics=[
            Metric("p50_s", "p50", "seconds"),
            Metric("p99_s", "p99", "seconds"),
            Metric("max_s", "max", "seconds"),
            Metric("wait_p50_s", "stored to received, p50", "seconds"),
            Metric("wait_p99_s", "stored to received, p99", "seconds"),
        ],
        baselines=["ppe", "flexiq", "huey"],
        ratio_rows=["stoker", "stoker-cli"],
        n_quick=100,
        n_full=1000,
        trial_timeout=90.0,
        plot="bench-latency.png",
    ),
    Scenario(
        name="timeout",
        title="Hard timeout: a task that sleeps 60 s under a 1 s limit",
        description=(
            "The task writes its pid and `time.time()` to a file when it starts, then sleeps "
            "60 s; its limit is 1 s (stoker `@task(timeout=1, max_retries=0)`, pebble "
            "`schedule(..., timeout=1)`, flexiq `@task(timeout=1, max_retries=0)`, huey "
            "`@task(timeout=1)`). *Error after deadline* is the time from the task's start + 1 s "
            "to the caller catching the error from `result()`. *Worker killed* counts the trials "
            "where the task's process was gone when the caller saw the error. *Next task* is the "
            "time from the error to the result of a no-op sent right after it. "
            "ProcessPoolExecutor and loky have no per-task timeout: their row is "
            "`future.result(timeout=1)`, the caller's own wait, which leaves the task running "
            "in its worker. huey's timeout is a SIGALRM that raises inside the task, so its "
            "worker process is meant to live on: *worker killed* does not apply to it."
        ),
        systems=EVERY_SYSTEM,
        metrics=[
            Metric("since_deadline_s", "error after deadline", "seconds"),
            Metric("worker_gone", "worker killed", "fraction", higher_is_better=True),
            Metric("next_after_error_s", "next task", "seconds"),
        ],
        info_keys=["caller saw", "worker after error", "next task"],
        baselines=["pebble", "flexiq", "huey"],
        ratio_rows=["stoker"],
        trial_timeout=90.0,
    ),
    Scenario(
        name="crash",
        title="Crash: a task that calls `os._exit(1)`",
        description=(
            "The task writes `time.time()` to a file and calls `os._exit(1)` at once. "
            "*Error after death* is the time from that timestamp to the caller catching the "
            "error from `result()` (waiting at most 30 s, 5 s in the quick mode). *Next task* "
            "is the time from the error to the result of a no-op sent right after it. stoker's "
            "task has `max_crashes=0` and flexiq's `max_retries=0`, so that the first crash is "
            "final; huey retries nothing unless told to."
        ),
        systems=EVERY_SYSTEM,
        metrics=[
            Metric("since_death_s", "error after death", "seconds"),
            Metric("next_after_error_s", "next task", "seconds"),
        ],
        info_keys=["caller saw", "next task"],
        baselines=["ppe", "pebble", "flexiq"],
        ratio_rows=["stoker"],
        trial_timeout=90.0,
    ),
    scale_scenario("scale-1k", 1_000, "1,000", first=True),
    scale_scenario("scale-100k", 100_000, "100,000", first=False),
    scale_scenario("scale-1m", 1_000_000, "1,000,000", first=False, plot="bench-scale.png"),
    Scenario(
        name="payload",
        title="Large payloads: 1 MiB and 10 MiB of bytes there and back",
        description=(
            "A task that returns its argument (`def echo(data): return data`), called with "
            "1 MiB and then 10 MiB of random bytes, one job at a time through a warm pool: N "
            "round trips at 1 MiB and max(3, N / 4) at 10 MiB, with the median of each. "
            "*MiB/s* counts the payload twice, as the argument and as the result: "
            "2 times the size divided by the round trip. flexiq refuses payloads over 1 MiB by default; its "
            "`max_payload_bytes` is set to 0 (no limit) here."
        ),
        systems=EVERY_PEER_AND_STOKER,
        metrics=[
            Metric("rt_1mb_s", "1 MiB round trip", "seconds"),
            Metric("mb_per_s_1mb", "1 MiB: MiB/s", "mb_rate", higher_is_better=True),
            Metric("rt_10mb_s", "10 MiB round trip", "seconds"),
            Metric("mb_per_s_10mb", "10 MiB: MiB/s", "mb_rate", higher_is_better=True),
        ],
        baselines=["ppe", "flexiq", "huey"],
        ratio_rows=["stoker"],
        n_quick=3,
        n_full=20,
        trial_timeout=120.0,
        seconds_per_n=3.0,
    ),
]


# --- running trials ----------------------------------------------------------------


def become_subreaper() -> None:
    """Adopt orphaned descendants (Linux), so that none can escape the cleanup."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER


def kill_leftovers() -> int:
    """Kill and reap every process still descending from this one; return how many were alive."""
    children = psutil.Process().children(recursive=True)
    alive = 0
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            alive += child.status() != psutil.STATUS_ZOMBIE
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    psutil.wait_procs(children, timeout=5)
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    return alive


class ZombieReaper:
    """Reap, while a trial runs, the orphans this (subreaper) process adopts.

    Orphans of a trial's worker processes become children of this process; a
    zombie among them would look alive to the trial waiting for it to exit.
    The trial process itself is left to ``subprocess``.
    """

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.wait(0.05):
            with contextlib.suppress(psutil.Error):
                for child in psutil.Process().children():
                    if child.pid != self.keep and child.status() == psutil.STATUS_ZOMBIE:
                        with contextlib.suppress(ChildProcessError):
                            os.waitpid(child.pid, os.WNOHANG)

    def __enter__(self) -> None:
        self.thread.start()

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def trial_env(db_path: str) -> dict[str, str]:
    env = dict(os.environ)
    env["BENCH_DB"] = db_path
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(BENCHES), env.get("PYTHONPATH")]))
    # flexiq starts its prefork children as "python -m flexiq.prefork", found on PATH.
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


#: The package each system needs in the trial's interpreter.
PACKAGES = {
    "stoker": "stoker",
    "stoker-map": "stoker",
    "stoker-cli": "stoker",
    "flexiq": "flexiq",
    "flexiq-map": "flexiq",
    "pebble": "pebble",
    "loky": "loky",
    "huey": "huey",
}


def preflight(systems: set[str]) -> dict[str, str]:
    """Import each system's package in a fresh interpreter; the systems that cannot run, and why."""
    broken: dict[str, str] = {}
    for package in sorted({PACKAGES[s] for s in systems if s in PACKAGES}):
        check = subprocess.run(
            [sys.executable, "-c", f"import {package}"],
            cwd=tempfile.gettempdir(),
            env=trial_env(os.devnull),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if check.returncode:
            lines = check.stderr.strip().splitlines() or [f"exit code {check.returncode}"]
            for system in systems:
                if PACKAGES.get(system) == package:
                    broken[system] = f"import {package} failed: {lines[-1]}"
    return broken


def run_trial(scenario: Scenario, system: str, quick: bool) -> dict[str, Any]:
    command = [sys.executable, str(BENCHES / "trial.py"), scenario.trial_name, system]
    n = scenario.n(quick)
    if n is not None:
        command += ["--n", str(n)]
    if quick:
        command.append("--quick")
    limit = scenario.timeout(quick)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="stoker-bench-") as tmp:
        proc = subprocess.Popen(
            command,
            cwd=tmp,
            env=trial_env(os.path.join(tmp, "bench.db")),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        timed_out = False
        try:
            with ZombieReaper(keep=proc.pid):
                out, err = proc.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            timed_out = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            leftovers = kill_leftovers()
    result: dict[str, Any] | None = None
    for line in reversed(out.decode(errors="replace").splitlines()):
        if line.startswith("{"):
            with contextlib.suppress(json.JSONDecodeError):
                result = json.loads(line)
                break
    if result is None:
        reason = f"timed out after {limit:g} s" if timed_out else f"exited with code {proc.returncode}"
        tail = err.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        result = {"scenario": scenario.name, "system": system, "metrics": {}, "info": {}}
        result["error"] = f"trial {reason}: {tail[0]}"
    result["wall_s"] = time.monotonic() - started
    result["leftover_processes"] = leftovers
    if result.get("error"):
        print(err.decode(errors="replace")[-3000:], file=sys.stderr)
    return result


# --- formatting -------------------------------------------------------------------


def fmt_value(metric: Metric, value: float) -> str:
    if metric.kind == "rate":
        return f"{value:,.0f}"
    if metric.kind == "seconds":
        if abs(value) < 10:
            return f"{value * 1000:,.1f} ms" if abs(value) < 0.1 else f"{value * 1000:,.0f} ms"
        return f"{value:,.1f} s"
    if metric.kind == "number":
        return f"{value:.3f}"
    if metric.kind == "bytes":
        return f"{value / 2**20:,.1f} MiB"
    if metric.kind == "mb_rate":
        return f"{value:,.1f}"
    return f"{value:g}"


def values(trials: list[dict[str, Any]], key: str) -> list[float]:
    return [t["metrics"][key] for t in trials if t["metrics"].get(key) is not None]


def cell(metric: Metric, trials: list[dict[str, Any]]) -> str:
    ok = [t for t in trials if not t.get("error")]
    if not ok:
        return f"failed ({len(trials)}/{len(trials)})"
    vals = values(ok, metric.key)
    failed = len(trials) - len(ok)
    suffix = f" ({failed} failed)" if failed else ""
    if metric.kind == "fraction":
        return f"{sum(1 for v in vals if v)}/{len(ok)}{suffix}"
    if not vals:
        return f"n/a in {len(ok)}/{len(ok)}" + suffix
    missing = len(ok) - len(vals)
    if missing:
        suffix += f" (n/a in {missing}/{len(ok)})"
    median = statistics.median(vals)
    text = fmt_value(metric, median)
    if len(vals) > 1:
        text += f" [{fmt_value(metric, min(vals))} {DASH} {fmt_value(metric, max(vals))}]"
    return text + suffix


def median_of(trials: list[dict[str, Any]], key: str) -> float | None:
    vals = values([t for t in trials if not t.get("error")], key)
    return statistics.median(vals) if vals else None


def ratio(metric: Metric, value: float | None, base: float | None) -> str:
    """How many times better the row is than the baseline (>1: better)."""
    if value is None or base is None or value <= 0 or base <= 0:
        return "n/a"
    r = value / base if metric.higher_is_better else base / value
    return f"{r:.2f}{TIMES}"


def scenario_tables(scenario: Scenario, results: dict[str, list[dict[str, Any]]]) -> list[str]:
    lines = [f"## {scenario.title}", "", scenario.description, ""]
    n = {t["info"].get("n") for trials in results.values() for t in trials if t["info"].get("n")}
    reps = max((len(trials) for trials in results.values()), default=0)
    header = f"Median [min {DASH} max] of {reps} trials"
    lines += [header + (f", N = {int(next(iter(n))):,}." if len(n) == 1 else "."), ""]
    lines.append("| system | " + " | ".join(m.label for m in scenario.metrics) + " |")
    lines.append("|---|" + "---:|" * len(scenario.metrics))
    for system in scenario.systems:
        trials = results.get(system, [])
        if not trials:
            continue
        row = [NAMES[system], *(cell(m, trials) for m in scenario.metrics)]
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")

    rows = [s for s in scenario.ratio_rows if results.get(s)]
    bases = [b for b in scenario.baselines if results.get(b)]
    ratio_metrics = [m for m in scenario.metrics if m.kind != "fraction" and m.compared]
    ratio_lines = []
    for system in rows:
        for base in bases:
            cells = [
                ratio(m, median_of(results[system], m.key), median_of(results[base], m.key))
                for m in ratio_metrics
            ]
            # A baseline that measured nothing (skipped, say) has no row.
            if not all(c == "n/a" for c in cells):
                ratio_lines.append(f"| {NAMES[system]} | {NAMES[base]} | " + " | ".join(cells) + " |")
    if ratio_lines:
        lines.append("Ratios of medians, as *times better than* the baseline (> 1: stoker is better):")
        lines.append("")
        lines.append("| | baseline | " + " | ".join(m.label for m in ratio_metrics) + " |")
        lines.append("|---|---|" + "---:|" * len(ratio_metrics))
        lines += ratio_lines
        lines.append("")

    if scenario.info_keys:
        lines.append("What happened (distinct outcomes, with the number of trials):")
        lines.append("")
        lines.append("| system | " + " | ".join(scenario.info_keys) + " |")
        lines.append("|---|" + "---|" * len(scenario.info_keys))
        for system in scenario.systems:
            trials = [t for t in results.get(system, []) if not t.get("error")]
            if not trials:
                continue
            row = [NAMES[system]]
            for key in scenario.info_keys:
                counts = Counter(t["info"].get(key, "?") for t in trials)
                row.append("<br>".join(f"{md_escape(text)} ({TIMES}{k})" for text, k in counts.most_common()))
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")

    skipped: dict[tuple[str, str], list[str]] = {}
    for trials in results.values():
        for t in trials:
            if t["info"].get("skipped"):
                key = (t["system"], t["info"]["skipped"])
                skipped.setdefault(key, []).append(t["info"].get("projection", ""))
    if skipped:
        lines.append("Skipped (with the number of trials):")
        lines.append("")
        for (system, why), projections in sorted(skipped.items()):
            detail = f"; projected: {', '.join(projections)}" if any(projections) else ""
            lines.append(f"- {NAMES[system]}: {md_escape(why)}{detail} ({TIMES}{len(projections)})")
        lines.append("")

    if scenario.plot:
        lines.append(f"![{scenario.title}]({scenario.plot})")
        lines.append("")

    failures = [t for trials in results.values() for t in trials if t.get("error")]
    if failures:
        lines.append("Failed trials:")
        lines.append("")
        for t in failures:
            lines.append(f"- {NAMES[t['system']]}: {md_escape(t['error'])}")
        lines.append("")
    return lines


def md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


# --- the machine ---------------------------------------------------------------------


def version_of(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine() -> list[tuple[str, str]]:
    model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = f"{psutil.virtual_memory().total / 2**30:.1f} GiB"
    commit = "unknown"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        if dirty:
            commit += ", with uncommitted changes"
    return [
        ("CPU", model),
        ("cores", f"{os.cpu_count()} logical ({psutil.cpu_count(logical=False)} physical)"),
        ("memory", memory),
        ("OS", f"{platform.system()} {platform.release()}"),
        ("Python", f"{platform.python_implementation()} {platform.python_version()}"),
        ("stoker", f"{version_of('stoker')} (commit {commit})"),
        ("flexiq", version_of("flexiq")),
        ("huey", version_of("huey")),
        ("loky", version_of("loky")),
        ("pebble", version_of("pebble")),
        ("psutil", version_of("psutil")),
    ]


def command_line(argv: list[str]) -> str:
    python = Path(sys.executable)
    with contextlib.suppress(ValueError):
        python = python.relative_to(Path.cwd())
    script = Path(__file__).resolve()
    with contextlib.suppress(ValueError):
        script = script.relative_to(Path.cwd().resolve())
    return shlex.join([str(python), str(script), *argv])


# --- targets -------------------------------------------------------------------------


Results = dict[str, dict[str, list[dict[str, Any]]]]


@dataclass(frozen=True)
class Target:
    """A goal for stoker, checked against the medians of one run."""

    goal: str
    measure: Any
    """measure(results) -> (measured text, hit or None when not measured)."""


def scenario_median(results: Results, scenario: str, system: str, key: str) -> float | None:
    trials = results.get(scenario, {}).get(system, [])
    return median_of(trials, key) if trials else None


def at_least(scenario: str, system: str, key: str, goal: float, fmt: str) -> Any:
    def measure(results: Results) -> tuple[str, bool | None]:
        value = scenario_median(results, scenario, system, key)
        if value is None:
            return "not measured", None
        return fmt.format(value), value >= goal

    return measure


def at_most_ms(scenario: str, system: str, key: str, goal_ms: float) -> Any:
    def measure(results: Results) -> tuple[str, bool | None]:
        value = scenario_median(results, scenario, system, key)
        if value is None:
            return "not measured", None
        return f"{value * 1000:,.1f} ms", value * 1000 <= goal_ms

    return measure


def ratio_at_least(first: tuple[str, str, str], second: tuple[str, str, str], goal: float) -> Any:
    """The median of ``first`` divided by that of ``second`` (scenario, system, key) is at least ``goal``."""

    def measure(results: Results) -> tuple[str, bool | None]:
        a = scenario_median(results, *first)
        b = scenario_median(results, *second)
        if a is None or b is None or b <= 0:
            return "not measured", None
        return f"{a / b:.2f}{TIMES} ({a:,.0f} / {b:,.0f})", a / b >= goal

    return measure


def all_trials(scenario: str, system: str, key: str) -> Any:
    def measure(results: Results) -> tuple[str, bool | None]:
        trials = [t for t in results.get(scenario, {}).get(system, []) if not t.get("error")]
        vals = values(trials, key)
        if not vals:
            return "not measured", None
        hits = sum(1 for v in vals if v)
        return f"{hits}/{len(trials)} trials", hits == len(trials)

    return measure


TARGETS = [
    Target(
        f"no-op end to end ≥ 1.0{TIMES} ProcessPoolExecutor",
        ratio_at_least(("noop", "stoker", "e2e_per_s"), ("noop", "ppe", "e2e_per_s"), 1.0),
    ),
    Target(
        f"no-op end to end ≥ 10{TIMES} flexiq",
        ratio_at_least(("noop", "stoker", "e2e_per_s"), ("noop", "flexiq", "e2e_per_s"), 10.0),
    ),
    Target("`delay()` ≥ 30,000 sends/s", at_least("noop", "stoker", "enqueue_per_s", 30_000, "{:,.0f}/s")),
    Target(
        "batch send (`map`) ≥ 300,000 sends/s",
        at_least("noop", "stoker-map", "enqueue_per_s", 300_000, "{:,.0f}/s"),
    ),
    Target("CPU-bound efficiency ≥ 0.97", at_least("cpu", "stoker", "efficiency", 0.97, "{:.3f}")),
    Target("latency p50 ≤ 1 ms", at_most_ms("latency", "stoker", "p50_s", 1.0)),
    Target("latency p99 ≤ 5 ms", at_most_ms("latency", "stoker", "p99_s", 5.0)),
    Target(
        "hard timeout reported ≤ 20 ms after the deadline",
        at_most_ms("timeout", "stoker", "since_deadline_s", 20.0),
    ),
    Target("hard timeout: the process is gone when reported", all_trials("timeout", "stoker", "worker_gone")),
    Target("next task ≤ 10 ms after a timeout", at_most_ms("timeout", "stoker", "next_after_error_s", 10.0)),
    Target("crash reported ≤ 50 ms", at_most_ms("crash", "stoker", "since_death_s", 50.0)),
    Target(
        f"engine claims with 1M pending ≥ 0.8{TIMES} with 1k",
        ratio_at_least(
            ("scale-1m", "stoker-cli", "claim_per_s"), ("scale-1k", "stoker-cli", "claim_per_s"), 0.8
        ),
    ),
]


def targets_table(results: Results) -> list[str]:
    lines = [
        "## Targets",
        "",
        "stoker's goals against the medians of this run (the in-caller pool, `stoker`, unless "
        "the goal names another way of running it; the claim rates are the engine's alone, "
        "from the scale scenarios).",
        "",
        "| target | measured | |",
        "|---|---:|---|",
    ]
    for target in TARGETS:
        measured, hit = target.measure(results)
        verdict = "not measured" if hit is None else ("hit" if hit else "missed")
        lines.append(f"| {target.goal} | {measured} | {verdict} |")
    lines.append("")
    return lines


# --- plots ---------------------------------------------------------------------------


def spread(trials: list[dict[str, Any]], key: str) -> tuple[float, float, float] | None:
    """Median, min and max of a metric over the trials that measured it."""
    vals = values([t for t in trials if not t.get("error")], key)
    if not vals:
        return None
    return statistics.median(vals), min(vals), max(vals)


def bar_panel(
    ax: Any, results: dict[str, list[dict[str, Any]]], systems: list[str], key: str, scale: float
) -> None:
    """Horizontal bars of a metric's median per system, with its range as error bars."""
    from matplotlib.ticker import NullFormatter

    rows = [(NAMES[s], spread(results.get(s, []), key)) for s in systems]
    rows = [(name, sp) for name, sp in rows if sp is not None]
    names = [name.replace("`", "") for name, _ in rows]
    medians = [sp[0] * scale for _, sp in rows]
    low = [(sp[0] - sp[1]) * scale for _, sp in rows]
    high = [(sp[2] - sp[0]) * scale for _, sp in rows]
    colors = ["tab:orange" if name.startswith("stoker") else "tab:blue" for name in names]
    ax.barh(names, medians, xerr=[low, high], color=colors, capsize=3)
    ax.invert_yaxis()
    ax.set_xscale("log")
    # Labels on the decades only: labelled minor ticks overlap on a narrow panel.
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.grid(axis="x", which="both", alpha=0.3)


def write_plots(results: Results, scenarios: list[Scenario], directory: Path) -> list[str]:
    """Draw the plots the scenarios name into ``directory``; the files written."""
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no plots", file=sys.stderr)
        return []
    # Agg draws to files without a display.
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_name = {s.name: s for s in scenarios}
    written: list[str] = []

    if "noop" in by_name:
        noop = by_name["noop"]
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
        bar_panel(axes[0], results["noop"], noop.systems, "enqueue_per_s", 1.0)
        axes[0].set_title("enqueue (sends/s, log scale)")
        bar_panel(axes[1], results["noop"], noop.systems, "e2e_per_s", 1.0)
        axes[1].set_title("end to end (jobs/s, log scale)")
        fig.suptitle(f"No-op throughput: median, with min {DASH} max")
        fig.tight_layout()
        fig.savefig(directory / noop.plot, dpi=100)
        plt.close(fig)
        written.append(noop.plot)

    if "latency" in by_name:
        latency = by_name["latency"]
        fig, axes = plt.subplots(1, 2, figsize=(12, 4), sharey=True)
        bar_panel(axes[0], results["latency"], latency.systems, "p50_s", 1000.0)
        axes[0].set_title("p50 (ms, log scale)")
        bar_panel(axes[1], results["latency"], latency.systems, "p99_s", 1000.0)
        axes[1].set_title("p99 (ms, log scale)")
        fig.suptitle(f"Latency through a warm idle pool: median, with min {DASH} max")
        fig.tight_layout()
        fig.savefig(directory / latency.plot, dpi=100)
        plt.close(fig)
        written.append(latency.plot)

    scale = [s for s in scenarios if s.trial_name == "scale"]
    if scale:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
        sizes = [s.n_full or 0 for s in scale]
        for system in BACKLOG_SYSTEMS:
            points = [
                (size, spread(results[s.name].get(system, []), "drain_per_s"))
                for size, s in zip(sizes, scale, strict=True)
            ]
            points = [(size, sp) for size, sp in points if sp is not None]
            if points:
                axes[0].plot(
                    [p[0] for p in points],
                    [p[1][0] for p in points],
                    marker="o",
                    label=NAMES[system].replace("`", ""),
                )
        claims = [
            (size, spread(results[s.name].get("stoker-cli", []), "claim_per_s"))
            for size, s in zip(sizes, scale, strict=True)
        ]
        claims = [(size, sp) for size, sp in claims if sp is not None]
        if claims:
            axes[0].plot(
                [p[0] for p in claims],
                [p[1][0] for p in claims],
                marker="s",
                linestyle="--",
                label="stoker engine claims",
            )
        axes[0].set_xscale("log")
        axes[0].set_yscale("log")
        axes[0].set_xlabel("pending jobs")
        axes[0].set_title("drain and claim rate (per s, median)")
        axes[0].legend()
        axes[0].grid(which="both", alpha=0.3)
        for system in BACKLOG_SYSTEMS:
            points = [
                (size, spread(results[s.name].get(system, []), "supervisor_peak_rss_bytes"))
                for size, s in zip(sizes, scale, strict=True)
            ]
            points = [(size, sp) for size, sp in points if sp is not None]
            if points:
                axes[1].plot(
                    [p[0] for p in points],
                    [p[1][0] / 2**20 for p in points],
                    marker="o",
                    label=NAMES[system].replace("`", ""),
                )
        axes[1].set_xscale("log")
        axes[1].set_xlabel("pending jobs")
        axes[1].set_ylabel("MiB")
        axes[1].set_title("supervisor peak RSS (median)")
        axes[1].legend()
        axes[1].grid(which="both", alpha=0.3)
        fig.tight_layout()
        plot = next((s.plot for s in scale if s.plot), "bench-scale.png")
        fig.savefig(directory / plot, dpi=100)
        plt.close(fig)
        written.append(plot)
    return written


# --- the report ----------------------------------------------------------------------

#: How each system is run, for the report.
HOW_RUN = [
    (
        "stoker",
        "`queue.start_worker(processes=2)`: the supervisor on a thread of the caller, 2 workers "
        "started from a forkserver; `stoker worker -p 2` is the same supervisor in its own process. "
        "`result()` is woken by the supervisor when it runs in the caller's process; otherwise it "
        "polls SQLite's change counter every 0.2 ms for 0.1 s, then every 1 ms, then every 50 ms. "
        "Jobs are claimed ahead with the default `prefetch=1`: one per worker, and while jobs are "
        "shorter than 2 ms as many as fit in 2 ms of work, up to 8 per worker.",
    ),
    ("ProcessPoolExecutor", "`ProcessPoolExecutor(max_workers=2)`, workers forked (the default on Linux)."),
    (
        "pebble",
        "`pebble.ProcessPool(max_workers=2)`, workers forked; the timeout is `schedule(..., timeout=1)`.",
    ),
    (
        "loky",
        "`loky.get_reusable_executor(max_workers=2)`, asked for again at every send, so that a broken "
        "executor is replaced as loky intends.",
    ),
    (
        "flexiq",
        '`queue.run_worker(pool="prefork")` in a separate process, 2 prefork children '
        "(`python -m flexiq.prefork`); its defaults otherwise. `result()` is called with "
        "`poll_interval=0.0005, max_poll_interval=0.05`, stoker's polling, not its default "
        "(50 ms up to 500 ms). `max_payload_bytes = 0` (no limit) for the 10 MiB payloads.",
    ),
    (
        "huey",
        "`SqliteHuey(filename=..., fsync=False)` (WAL, synchronous=OFF: without it every commit "
        "fsyncs, which stoker's synchronous=NORMAL does not); its consumer in a separate process: "
        "`huey_consumer bench_tasks_huey.huey --workers 2 --worker-type process --delay 0.001 "
        "--max-delay 0.001 --backoff 1`, i.e. each worker polls the queue every 1 ms when idle "
        "(the default starts at 0.1 s and backs off to 10 s). Results are polled with stoker's "
        "pauses through `storage.has_data_for_key`, then read with `Result.get()` (huey's own "
        "blocking wait starts at 50 ms).",
    ),
]


def report(
    results: dict[str, dict[str, list[dict[str, Any]]]],
    scenarios: list[Scenario],
    args: argparse.Namespace,
    argv: list[str],
    elapsed: float,
) -> str:
    today = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Benchmarks",
        "",
        "stoker against `concurrent.futures.ProcessPoolExecutor`, pebble's `ProcessPool`, loky's "
        "reusable executor, flexiq's prefork pool and huey with SQLite, each with 2 worker processes. "
        "Every trial runs in a fresh Python process with a fresh database in a fresh temporary "
        "directory; the order of the systems alternates between repetitions; every process a trial "
        "started is killed when it ends. The code is in `benches/` (`run.py` drives, `trial.py` runs "
        "one trial, `bench_tasks_*.py` define the tasks).",
        "",
        "This file and its plots are written by the benchmark itself; to reproduce them:",
        "",
        "```sh",
        command_line(argv),
        "```",
        "",
        "Two modes: the quick mode (`--quick`: 3 repetitions, smaller N) takes 6 to 12 minutes; "
        "the full mode (`make bench`, without `--quick`: the N given in each section's text, 5 "
        "repetitions unless `--reps` says otherwise) takes most of its time in flexiq's and huey's "
        "20,000 no-ops and 1,000 one-at-a-time latencies. Where the time of a stoker job goes, "
        "and what was changed for it, is in [performance.md](performance.md).",
        "",
        f"Run on {today}, {args.reps} repetitions, {elapsed:.0f} s in all"
        + (" (quick mode)." if args.quick else " (full mode)."),
        "",
        *targets_table(results),
        "## How each system runs",
        "",
        "| system | how |",
        "|---|---|",
        *(f"| {name} | {how} |" for name, how in HOW_RUN),
        "",
        "| machine | |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in machine()),
        "",
        "On this machine the caller, stoker's supervisor (or flexiq's worker process, or huey's "
        "consumer) and the 2 worker processes share the cores listed above, so the numbers include "
        "contention between them.",
        "",
    ]
    for scenario in scenarios:
        lines += scenario_tables(scenario, results[scenario.name])
    return "\n".join(lines).rstrip() + "\n"


# --- main ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 repetitions and small N")
    parser.add_argument("--reps", type=int, default=None, help="repetitions (default: 3 quick, 5 full)")
    parser.add_argument("--write", action="store_true", help=f"rewrite {DOC.relative_to(ROOT)}")
    parser.add_argument("--scenarios", default=None, help="comma-separated subset of scenarios")
    parser.add_argument("--systems", default=None, help="comma-separated subset of systems")
    parser.add_argument("--raw", default=None, help="also write every trial's JSON to this file")
    args = parser.parse_args(argv)
    args.reps = args.reps or (3 if args.quick else 5)
    if args.reps < 1:
        parser.error("--reps must be at least 1")
    scenarios = SCENARIOS
    if args.scenarios:
        wanted = args.scenarios.split(",")
        unknown = set(wanted) - {s.name for s in SCENARIOS}
        if unknown:
            parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
        scenarios = [s for s in SCENARIOS if s.name in wanted]
    systems_filter = set(args.systems.split(",")) if args.systems else None
    if systems_filter and systems_filter - set(NAMES):
        parser.error(f"unknown system(s): {', '.join(sorted(systems_filter - set(NAMES)))}")

    selected = {s for sc in scenarios for s in sc.systems if not systems_filter or s in systems_filter}
    broken = preflight(selected)
    for system, reason in sorted(broken.items()):
        print(f"cannot run {system}: {reason}", file=sys.stderr)
    if any(PACKAGES.get(s) == "stoker" for s in broken):
        print("stoker does not import: nothing to measure", file=sys.stderr)
        return 2
    if broken:
        systems_filter = selected - set(broken)

    become_subreaper()
    results: dict[str, dict[str, list[dict[str, Any]]]] = {s.name: {} for s in scenarios}
    raw: list[dict[str, Any]] = []
    started = time.monotonic()
    for rep in range(args.reps):
        for scenario in scenarios:
            systems = [s for s in scenario.systems if not systems_filter or s in systems_filter]
            if rep % 2:
                systems.reverse()
            for system in systems:
                trial = run_trial(scenario, system, args.quick)
                trial["rep"] = rep
                raw.append(trial)
                results[scenario.name].setdefault(system, []).append(trial)
                summary = trial.get("error") or ", ".join(
                    f"{m.key}={trial['metrics'][m.key]:.4g}"
                    for m in scenario.metrics
                    if trial["metrics"].get(m.key) is not None
                )
                leftovers = trial["leftover_processes"]
                left = f", killed {leftovers} leftover process(es)" if leftovers else ""
                print(
                    f"[{rep + 1}/{args.reps}] {scenario.name:8} {system:11} {trial['wall_s']:5.1f} s  "
                    f"{summary}{left}",
                    file=sys.stderr,
                    flush=True,
                )
    elapsed = time.monotonic() - started
    text = report(results, scenarios, args, argv, elapsed)
    print(text)
    if args.raw:
        Path(args.raw).write_text(json.dumps(raw, indent=1) + "\n")
    if args.write:
        DOC.parent.mkdir(parents=True, exist_ok=True)
        DOC.write_text(text)
        print(f"wrote {DOC.relative_to(ROOT)}", file=sys.stderr)
        for name in write_plots(results, scenarios, DOC.parent):
            print(f"wrote {(DOC.parent / name).relative_to(ROOT)}", file=sys.stderr)
    failed = sum(1 for t in raw if t.get("error"))
    return 1 if failed == len(raw) else 0


if __name__ == "__main__":
    sys.exit(main())
