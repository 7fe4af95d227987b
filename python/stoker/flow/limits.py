"""Flow control: rate limits, concurrency limits and circuit breakers of tasks.

The limits are declared on the task (``@queue.task(rate_limit="10/s",
concurrency=2, circuit_breaker=CircuitBreaker(5, window=60, cooldown=30))``)
and enforced by the engine, inside its claims, across every supervisor that
shares the database: a supervisor writes the limits of its tasks to the
database when it starts, and a process that sends with
``when_limited="fail"`` writes them before its first send of the task.
Queue-wide rate limits are set with :func:`set_queue_rate_limit`
(``Queue.set_queue_rate_limit``).
"""

from __future__ import annotations

import hashlib
import re
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from .._base.bounds import MAX_DURATION_S, MAX_RATE_COUNT, check_int, check_seconds
from ..errors import InvalidOptionError

if TYPE_CHECKING:
    from collections.abc import Iterable

    from .._core import Engine, LimitState
    from .host import QueueView

#: ``when_limited`` values: jobs over a limit wait (stay pending), or the send fails.
WHEN_LIMITED = ("wait", "fail")

_UNITS = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d*(?:\.\d+)?)\s*(s|sec|second|m|min|minute|h|hour|d|day)s?\s*$")


def parse_rate_limit(option: str, value: object) -> tuple[int, int]:
    """``"10/s"``, ``"100/m"``, ``"1000/h"``, ``"5/d"`` or ``"3/10s"``: ``(count, per_ms)``."""
    match = _RATE.match(value) if isinstance(value, str) else None
    if match is None:
        raise InvalidOptionError(
            f'{option} must look like "10/s", "100/m", "1000/h" or "3/10s", got {value!r}'
        )
    count_text, multiple, unit = match.groups()
    count = int(count_text)
    per_ms = float(multiple or 1) * _UNITS[unit[0]]
    if count < 1 or round(per_ms) < 1:
        raise InvalidOptionError(f"{option} must allow at least one call per period, got {value!r}")
    if count > MAX_RATE_COUNT:
        raise InvalidOptionError(f"{option} allows at most {MAX_RATE_COUNT} calls per period, got {value!r}")
    if per_ms > MAX_DURATION_S * 1000:
        raise InvalidOptionError(
            f"{option} has a period of at most {MAX_DURATION_S} s (about 1000 years), got {value!r}"
        )
    return count, round(per_ms)


@dataclass(frozen=True)
class CircuitBreaker:
    """``failures`` failed attempts within ``window`` seconds open the breaker for ``cooldown`` seconds.

    While it is open the task's jobs wait (or, with ``when_limited="fail"``,
    sends raise :class:`~stoker.errors.CircuitBreakerOpenError`). Then one job
    runs as a probe: its success closes the breaker, its failure opens it again.
    Errors, timeouts and worker crashes count; an expired lease does not.
    """

    failures: int = 5
    window: float = 60.0
    cooldown: float = 30.0

    def validated(self) -> CircuitBreaker:
        check_int("circuit_breaker failures", self.failures, low=1)
        check_seconds("circuit_breaker window", self.window, allow_zero=False)
        check_seconds("circuit_breaker cooldown", self.cooldown, allow_zero=True)
        return self


def as_circuit_breaker(value: object) -> CircuitBreaker | None:
    """Accept a :class:`CircuitBreaker`, a ``(failures, window, cooldown)`` tuple, or None."""
    if value is None or isinstance(value, CircuitBreaker):
        return value
    if isinstance(value, tuple) and len(value) == 3:
        return CircuitBreaker(*value)
    raise InvalidOptionError(
        f"circuit_breaker must be a CircuitBreaker or (failures, window, cooldown), got {value!r}"
    )


class FlowOptions(Protocol):
    """The flow-control options of a task (``TaskOptions`` has them)."""

    @property
    def rate_limit(self) -> str | None: ...
    @property
    def concurrency(self) -> int | None: ...
    @property
    def circuit_breaker(self) -> CircuitBreaker | None: ...
    @property
    def when_limited(self) -> str: ...
    @property
    def unique(self) -> bool: ...


class LimitedTask(Protocol):
    """A task whose limits are written to the database (``Task`` is one)."""

    @property
    def name(self) -> str: ...
    @property
    def options_(self) -> FlowOptions: ...


def validate_flow_options(options: FlowOptions) -> None:
    """Check the flow-control options of a task (called by ``TaskOptions.validated``)."""
    if options.rate_limit is not None:
        parse_rate_limit("rate_limit", options.rate_limit)
    if options.concurrency is not None:
        check_int("concurrency", options.concurrency, low=1)
    if options.circuit_breaker is not None:
        if not isinstance(options.circuit_breaker, CircuitBreaker):
            raise InvalidOptionError(
                f"circuit_breaker must be a CircuitBreaker, got {options.circuit_breaker!r}"
            )
        options.circuit_breaker.validated()
    check_when_limited(options.when_limited)
    if not isinstance(options.unique, bool):
        raise InvalidOptionError(f"unique must be True or False, got {options.unique!r}")


def check_when_limited(value: object) -> None:
    if value not in WHEN_LIMITED:
        raise InvalidOptionError(f"when_limited must be 'wait' or 'fail', got {value!r}")


def limits_of(options: FlowOptions) -> dict[str, Any]:
    """The keyword arguments of ``Engine.set_limits`` for a task's options."""
    rate = None
    if options.rate_limit is not None:
        count, per_ms = parse_rate_limit("rate_limit", options.rate_limit)
        rate = (count, per_ms, 1)
    breaker = None
    if options.circuit_breaker is not None:
        cb = options.circuit_breaker
        breaker = (cb.failures, round(cb.window * 1000), round(cb.cooldown * 1000))
    return {"rate": rate, "concurrency": options.concurrency, "breaker": breaker}


def push_limits(engine: Engine, tasks: Iterable[LimitedTask]) -> None:
    """Write the limits of these tasks to the database (removing those of tasks that have none)."""
    for task in tasks:
        engine.set_limits("task", task.name, **limits_of(task.options_))


#: Tasks whose limits this process already wrote, per queue.
_PUSHED: weakref.WeakKeyDictionary[QueueView, set[str]] = weakref.WeakKeyDictionary()


def ensure_limits_pushed(queue: QueueView, task_name: str, options: FlowOptions) -> None:
    """Before a send that fails when limited: make sure the engine knows the task's limits."""
    pushed = _PUSHED.setdefault(queue, set())
    if task_name not in pushed:
        queue.engine.set_limits("task", task_name, **limits_of(options))
        pushed.add(task_name)


def unique_key_of(task_name: str, payload: bytes) -> str:
    """The uniqueness key of a call: the task name and a hash of its pickled arguments."""
    return f"{task_name}:{hashlib.sha256(payload).hexdigest()}"


def set_queue_rate_limit(engine: Engine, queue_name: str, rate_limit: str | None) -> None:
    """Limit how fast the jobs of one queue start, across all tasks (None removes the limit)."""
    rate = None
    if rate_limit is not None:
        count, per_ms = parse_rate_limit("rate_limit", rate_limit)
        rate = (count, per_ms, 1)
    engine.set_limits("queue", queue_name, rate=rate)


def breakers(limits: Iterable[LimitState]) -> dict[str, str]:
    """The circuit breaker state of each task among ``limits`` that has one: closed, open or half_open."""
    return {
        limit.key.removeprefix("task:"): limit.breaker_state for limit in limits if limit.breaker is not None
    }
