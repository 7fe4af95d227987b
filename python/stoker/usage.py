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


def _memory_kib() -> tuple[int, int]:
    """This process's peak RSS (the kernel's high-water mark) and current RSS, in KiB."""
    if sys.platform.startswith("linux"):
        peak = current = -1
        try:
            with open(_STATUS) as handle:
                for line in handle:
                    if line.startswith("VmHWM:"):
                        peak = int(line.split()[1])
                    elif line.startswith("VmRSS:"):
                        current = int(line.split()[1])
                        break  # VmRSS comes after VmHWM.
        except (OSError, ValueError, IndexError):
            pass
        if peak >= 0 and current >= 0:
            return peak, current
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak = peak // 1024 if sys.platform == "darwin" else peak
    return peak, peak


#: The last reading of this process's memory, ``(peak, current)`` in KiB. When
#: the peak equals the current RSS, the high-water mark needs no reset before
#: the next attempt: its peak can only be what that attempt reaches. Resetting
#: it (a write to /proc/self/clear_refs, which walks the page tables) is the
#: most expensive part of metering a short task, so it is done only when an
#: earlier attempt left the mark above the current RSS.
_last_reading: tuple[int, int] | None = None


class UsageMeter:
    """Started before an attempt, read after it: what the attempt cost.

    CPU time counts this process and the children it waited for. Peak RSS is
    the attempt's own where the kernel lets the high-water mark be reset
    (Linux), otherwise the process's lifetime peak.
    """

    def __init__(self) -> None:
        if _last_reading is None or _last_reading[0] > _last_reading[1]:
            self._peak_is_per_attempt = _reset_peak_rss()
        else:
            self._peak_is_per_attempt = sys.platform.startswith("linux")
        self._wall = time.monotonic()
        self._self = resource.getrusage(resource.RUSAGE_SELF)
        self._children = resource.getrusage(resource.RUSAGE_CHILDREN)

    def read(self) -> dict[str, Any]:
        now_self = resource.getrusage(resource.RUSAGE_SELF)
        now_children = resource.getrusage(resource.RUSAGE_CHILDREN)
        user = (now_self.ru_utime - self._self.ru_utime) + (now_children.ru_utime - self._children.ru_utime)
        system = (now_self.ru_stime - self._self.ru_stime) + (now_children.ru_stime - self._children.ru_stime)
        global _last_reading
        _last_reading = _memory_kib()
        return {
            "wall_s": round(time.monotonic() - self._wall, 6),
            "cpu_user_s": round(user, 6),
            "cpu_system_s": round(system, 6),
            "peak_rss_kib": _last_reading[0],
            "worker_pid": os.getpid(),
        }

    def json(self) -> str:
        return json.dumps(self.read())
