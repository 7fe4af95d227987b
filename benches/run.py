"""Benchmarks of stoker against concurrent.futures.ProcessPoolExecutor, pebble and flexiq.

Usage (from the repository root)::

    .venv/bin/python benches/run.py            # full run, prints markdown tables
    .venv/bin/python benches/run.py --quick    # 3 repetitions, small N
    .venv/bin/python benches/run.py --quick --write   # and rewrite docs/benchmarks.md

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
    "stoker": "stoker",
    "stoker-map": "stoker, `map`",
    "stoker-cli": "stoker, `stoker worker` process",
    "flexiq": "flexiq prefork",
}


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    kind: str
    """rate (per second), seconds, or fraction (of trials where it was true)."""
    higher_is_better: bool = False


@dataclass(frozen=True)
class Scenario:
    name: str
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

    def n(self, quick: bool) -> int | None:
        return self.n_quick if quick else self.n_full

    def timeout(self, quick: bool) -> float:
        n = self.n(quick) or 0
        return self.trial_timeout + n / 100


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
            "per job) or `task.map()` (one transaction for all N), or runs its pool in a "
            "separate `stoker worker -p 2` process like flexiq's. flexiq runs "
            '`queue.run_worker(pool="prefork")` in a separate process (2 prefork children); '
            "its `result()` polls every 0.5 ms doubling up to 50 ms. "
            "ProcessPoolExecutor and pebble use `submit`/`schedule` and futures. "
            "Workers are started by fork (ProcessPoolExecutor and pebble, the default on Linux), "
            "from a forkserver (stoker), or as `python -m flexiq.prefork` (flexiq)."
        ),
        systems=["ppe", "pebble", "stoker", "stoker-map", "stoker-cli", "flexiq"],
        metrics=[
            Metric("enqueue_per_s", "enqueue (sends/s)", "rate", higher_is_better=True),
            Metric("e2e_per_s", "end to end (jobs/s)", "rate", higher_is_better=True),
        ],
        baselines=["ppe", "flexiq"],
        ratio_rows=["stoker", "stoker-map", "stoker-cli"],
        n_quick=2000,
        n_full=20000,
        trial_timeout=90.0,
    ),
    Scenario(
        name="latency",
        title="Latency: one task at a time through a warm idle pool",
        description=(
            "N no-op tasks, each sent only after the previous result is in the caller's hands, "
            "so the pool is idle and warm when each arrives; the time from `delay()`/`submit()` "
            "to the result, p50, p99 and max. stoker runs its pool on a thread of the caller "
            "(a result wakes the waiter through the supervisor) or in a separate "
            "`stoker worker` process (the waiter notices the result through the database's "
            "change counter, checked every millisecond for the first 5 s of a wait). "
            "*Stored to received* (stoker only) is the time from the job's outcome being "
            "stored to the result in the caller's hands: the cost of waiting."
        ),
        systems=["ppe", "pebble", "stoker", "stoker-cli", "flexiq"],
        metrics=[
            Metric("p50_s", "p50", "seconds"),
            Metric("p99_s", "p99", "seconds"),
            Metric("max_s", "max", "seconds"),
            Metric("wait_p50_s", "stored to received, p50", "seconds"),
            Metric("wait_p99_s", "stored to received, p99", "seconds"),
        ],
        baselines=["ppe", "flexiq"],
        ratio_rows=["stoker", "stoker-cli"],
        n_quick=200,
        n_full=1000,
        trial_timeout=90.0,
    ),
    Scenario(
        name="timeout",
        title="Hard timeout: a task that sleeps 60 s under a 1 s limit",
        description=(
            "The task writes its pid and `time.time()` to a file when it starts, then sleeps "
            "60 s; its limit is 1 s (stoker `@task(timeout=1, max_retries=0)`, pebble "
            "`schedule(..., timeout=1)`, flexiq `@task(timeout=1, max_retries=0)`). "
            "*Error after deadline* is the time from the task's start + 1 s to the caller "
            "catching the error from `result()`. *Worker killed* counts the trials where the "
            "task's process was gone when the caller saw the error. *Next task* is the time "
            "from the error to the result of a no-op sent right after it. ProcessPoolExecutor "
            "has no hard timeout: its row is `future.result(timeout=1)`, the caller's own wait, "
            "which leaves the task running in its worker."
        ),
        systems=["ppe", "pebble", "stoker", "flexiq"],
        metrics=[
            Metric("since_deadline_s", "error after deadline", "seconds"),
            Metric("worker_gone", "worker killed", "fraction", higher_is_better=True),
            Metric("next_after_error_s", "next task", "seconds"),
        ],
        info_keys=["caller saw", "worker after error", "next task"],
        baselines=["pebble", "flexiq"],
        ratio_rows=["stoker"],
        trial_timeout=90.0,
    ),
    Scenario(
        name="crash",
        title="Crash: a task that calls `os._exit(1)`",
        description=(
            "The task writes `time.time()` to a file and calls `os._exit(1)` at once. "
            "*Error after death* is the time from that timestamp to the caller catching the "
            "error from `result()` (waiting at most 30 s). *Next task* is the time from the "
            "error to the result of a no-op sent right after it. stoker's task has "
            "`max_crashes=0` and flexiq's `max_retries=0`, so that the first crash is final."
        ),
        systems=["ppe", "pebble", "stoker", "flexiq"],
        metrics=[
            Metric("since_death_s", "error after death", "seconds"),
            Metric("next_after_error_s", "next task", "seconds"),
        ],
        info_keys=["caller saw", "next task"],
        baselines=["ppe", "pebble", "flexiq"],
        ratio_rows=["stoker"],
        trial_timeout=90.0,
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
    "pebble": "pebble",
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
    command = [sys.executable, str(BENCHES / "trial.py"), scenario.name, system]
    n = scenario.n(quick)
    if n is not None:
        command += ["--n", str(n)]
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
    ratio_metrics = [m for m in scenario.metrics if m.kind != "fraction"]
    if rows and bases and ratio_metrics:
        lines.append("Ratios of medians, as *times better than* the baseline (> 1: stoker is better):")
        lines.append("")
        lines.append("| | baseline | " + " | ".join(m.label for m in ratio_metrics) + " |")
        lines.append("|---|---|" + "---:|" * len(ratio_metrics))
        for system in rows:
            for base in bases:
                cells = [
                    ratio(m, median_of(results[system], m.key), median_of(results[base], m.key))
                    for m in ratio_metrics
                ]
                lines.append(f"| {NAMES[system]} | {NAMES[base]} | " + " | ".join(cells) + " |")
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
        "stoker against `concurrent.futures.ProcessPoolExecutor`, pebble's `ProcessPool` and flexiq's "
        "prefork pool, each with 2 worker processes. Every trial runs in a fresh Python process "
        "with a fresh database in a fresh temporary directory; the order of the systems alternates "
        "between repetitions; every process a trial started is killed when it ends. The code is in "
        "`benches/` (`run.py` drives, `trial.py` runs one trial, `bench_tasks_*.py` define the tasks).",
        "",
        "This file is written by the benchmark itself; to reproduce it:",
        "",
        "```sh",
        command_line(argv),
        "```",
        "",
        "(`make bench` runs the full benchmark and prints the tables without writing this file.)",
        "",
        f"Run on {today}, {args.reps} repetitions, {elapsed:.0f} s in all.",
        "",
        "| machine | |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in machine()),
        "",
        "On this machine the caller, stoker's supervisor (or flexiq's worker process) and the "
        "2 worker processes share the cores listed above, so the numbers include contention "
        "between them.",
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
    failed = sum(1 for t in raw if t.get("error"))
    return 1 if failed == len(raw) else 0


if __name__ == "__main__":
    sys.exit(main())
