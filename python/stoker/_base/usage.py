"""Resource accounting of one attempt: wall time, CPU time and peak memory."""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from typing import Any

_CLEAR_REFS = "/proc/self/clear_refs"
_STATUS = "/proc/self/status"


def _reset_peak_rss() -> bool:
    """Reset the kernel's high-water mark of this process's RSS (Linux 4.0+)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        with open(_CLEAR_REFS, "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _high_water_mark_kib() -> int | None:
    """The kernel's high-water mark of this process's RSS (VmHWM), which a reset lowers."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        with open(_STATUS) as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _max_rss_kib(usage: resource.struct_rusage) -> int:
    return usage.ru_maxrss // 1024 if sys.platform == "darwin" else usage.ru_maxrss


class _Mark:
    """What the metering of earlier attempts in this process knows of the RSS mark.

    Reading or resetting the mark through /proc costs about 0.1 ms here, more
    than the rest of a short task's metering, so both are done only after an
    attempt that raised the mark: ``getrusage`` (already read for the CPU
    times) tells that cheaply. An attempt that did not raise it reports the
    mark as it stands, an upper bound of its own peak; one that raised it
    reports its exact peak.
    """

    reset_before_next = True
    last_peak_kib = 0


class UsageMeter:
    """Started before an attempt, read after it: what the attempt cost.

    CPU time counts this process and the children it waited for. Peak RSS is
    the high-water mark since it was last reset: exact for an attempt that
    raised it, an upper bound otherwise. The mark is reset (Linux) before the
    attempt that follows one that raised it, so a small task after a large
    one reports its own peak.
    """

    def __init__(self) -> None:
        self._was_reset = False
        if _Mark.reset_before_next:
            self._was_reset = _reset_peak_rss()
            _Mark.reset_before_next = False
        self._wall = time.monotonic()
        self._self = resource.getrusage(resource.RUSAGE_SELF)
        self._children = resource.getrusage(resource.RUSAGE_CHILDREN)

    def read(self) -> dict[str, Any]:
        now_self = resource.getrusage(resource.RUSAGE_SELF)
        now_children = resource.getrusage(resource.RUSAGE_CHILDREN)
        user = (now_self.ru_utime - self._self.ru_utime) + (now_children.ru_utime - self._children.ru_utime)
        system = (now_self.ru_stime - self._self.ru_stime) + (now_children.ru_stime - self._children.ru_stime)
        peak = _max_rss_kib(now_self)
        if peak > _max_rss_kib(self._self):
            _Mark.reset_before_next = True  # It rose: the next attempt starts from a fresh mark.
        elif self._was_reset:
            # The lifetime maximum did not move, but the mark was reset at the
            # start: what it says now is this attempt's own peak.
            peak = _high_water_mark_kib() or peak
        else:
            peak = _Mark.last_peak_kib or peak
        _Mark.last_peak_kib = peak
        return {
            "wall_s": round(time.monotonic() - self._wall, 6),
            "cpu_user_s": round(user, 6),
            "cpu_system_s": round(system, 6),
            "peak_rss_kib": peak,
            "worker_pid": os.getpid(),
        }

    def json(self) -> str:
        """:meth:`read` as a JSON object, exactly as ``json.dumps`` writes it."""
        values = self.read()
        if not all(type(value) in (int, float) for value in values.values()):
            return json.dumps(values)
        # Written by hand: once per job, json.dumps of five numbers costs
        # several times more, and repr() of an int or a float is what it writes.
        return "{" + ", ".join(f'"{key}": {value!r}' for key, value in values.items()) + "}"
