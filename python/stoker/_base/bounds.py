"""The ranges option values must lie in, checked in one place.

Options reach the engine as signed 64-bit integers (counts, priorities, ids)
and as milliseconds (durations, times). A value outside those ranges used to
fail far from the call that gave it: a bare ``OverflowError`` at every send of
a task decorated with ``priority=10**30``, or a supervisor dying at start on a
``concurrency=2**63``. Every option is checked here instead, where it is given
(the decorator, ``task.options(...)``, a schedule, a queue-wide limit, the
supervisor, the command line), and a wrong one raises
:class:`~stoker.errors.InvalidOptionError` naming the option and its range.
NaN and infinities are never a valid number of anything.
"""

from __future__ import annotations

import math

from ..errors import InvalidOptionError

#: The range of a signed 64-bit integer, the engine's type for counts,
#: priorities and job ids.
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

#: The longest duration the engine accepts, in seconds: about 1000 years, the
#: same bound as ``MAX_DURATION_MS`` in ``rust/stoker-engine/src/model.rs``.
#: Bounded durations keep every ``now + duration`` sum the engine makes far
#: from 64-bit overflow; nobody waits longer.
MAX_DURATION_S = 1000 * 365 * 24 * 60 * 60
#: The shortest duration that is not zero: the engine counts in milliseconds,
#: so anything shorter would round to nothing.
MIN_DURATION_S = 0.001
#: The latest Unix time a job or a schedule may be set for: the last second of
#: the year 9999 (UTC), the last a ``datetime`` holds, so that every time
#: stoker stores can be shown as one.
MAX_TIMESTAMP_S = 253_402_300_799
#: The largest memory bound, in MiB: 2**63 bytes.
MAX_MEMORY_MB = 2**43
#: The most worker processes one supervisor starts: Linux's largest
#: ``pid_max``, so a larger count can only be a mistake (it would start
#: processes until the machine ran out).
MAX_PROCESSES = 2**22
#: The most jobs a supervisor claims ahead per worker process; with
#: MAX_PROCESSES it keeps a claim's size (prefetch times processes) a 64-bit
#: count. Anything near it only takes jobs away from other supervisors.
MAX_PREFETCH = 2**32
#: The most tokens a rate limit adds per period (the engine's bound, which
#: keeps its fixed-point token arithmetic exact).
MAX_RATE_COUNT = 1_000_000_000


_YEAR_S = 365 * 24 * 60 * 60


def _about(seconds: float) -> str:
    """``31536000000 s (about 1000 years)``: a bound, in seconds and in words when long."""
    if seconds < _YEAR_S:
        return f"{seconds:g} s"
    return f"{seconds:.0f} s (about {seconds / _YEAR_S:.0f} years)"


def check_int(option: str, value: object, *, low: int, high: int = INT64_MAX) -> int:
    """``value`` if it is an int (not a bool) within ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidOptionError(f"{option} must be an int from {low} to {high}, got {value!r}")
    return value


def check_number(option: str, value: object, *, low: float, high: float, unit: str = "") -> float:
    """``value`` if it is a finite int or float (not a bool) within ``[low, high]``."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not low <= value <= high
    ):
        what = f"a number of {unit}" if unit else "a number"
        raise InvalidOptionError(f"{option} must be {what} from {low:g} to {high:g}, got {value!r}")
    return float(value)


def check_seconds(option: str, value: object, *, allow_zero: bool, high: float = MAX_DURATION_S) -> float:
    """``value`` if it is a duration in seconds the engine can hold.

    From 0 (``allow_zero``) or else from a millisecond, up to ``high``
    (:data:`MAX_DURATION_S` unless a tighter bound applies).
    """
    low = 0.0 if allow_zero else MIN_DURATION_S
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not low <= value <= high
    ):
        bound = ">= 0" if allow_zero else f"> 0 (at least {MIN_DURATION_S:g})"
        raise InvalidOptionError(
            f"{option} must be a number of seconds {bound} and at most {_about(high)}, got {value!r}"
        )
    return float(value)


def check_timestamp(option: str, value: object) -> float:
    """``value`` if it is a Unix time in seconds from 0 to :data:`MAX_TIMESTAMP_S`."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not 0 <= value <= MAX_TIMESTAMP_S
    ):
        raise InvalidOptionError(
            f"{option} must be a Unix time in seconds from 0 to {MAX_TIMESTAMP_S} "
            f"(the end of the year 9999), got {value!r}"
        )
    return float(value)
