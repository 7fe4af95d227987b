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


def _peak_rss_kib() -> int:
    if sys.platform.startswith("linux"):
        try:
            with open(_STATUS) as handle:
                for line in handle:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1])
        except (OSError, ValueError, IndexError):
            pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak


class UsageMeter:
    """Started before an attempt, read after it: what the attempt cost.

    CPU time counts this process and the children it waited for. Peak RSS is
    the attempt's own where the kernel lets the high-water mark be reset
    (Linux), otherwise the process's lifetime peak.
    """

    def __init__(self) -> None:
        self._peak_is_per_attempt = _reset_peak_rss()
        self._wall = time.monotonic()
        self._self = resource.getrusage(resource.RUSAGE_SELF)
        self._children = resource.getrusage(resource.RUSAGE_CHILDREN)

    def read(self) -> dict[str, Any]:
        now_self = resource.getrusage(resource.RUSAGE_SELF)
        now_children = resource.getrusage(resource.RUSAGE_CHILDREN)
        user = (now_self.ru_utime - self._self.ru_utime) + (now_children.ru_utime - self._children.ru_utime)
        system = (now_self.ru_stime - self._self.ru_stime) + (now_children.ru_stime - self._children.ru_stime)
        return {
            "wall_s": round(time.monotonic() - self._wall, 6),
            "cpu_user_s": round(user, 6),
            "cpu_system_s": round(system, 6),
            "peak_rss_kib": _peak_rss_kib(),
            "worker_pid": os.getpid(),
        }

    def json(self) -> str:
        return json.dumps(self.read())
