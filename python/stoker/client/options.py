"""Task options and per-call overrides, and their checks.

:class:`TaskOptions` are given once, at ``@queue.task(...)``; a
:class:`CallOptions` overrides some of them for the calls of one
:meth:`~stoker.Task.options` sender. Every value is checked here, at the call
that gives it, naming the option and its range.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from .._base.bounds import INT64_MIN, MAX_MEMORY_MB, check_int, check_number, check_seconds
from ..errors import InvalidOptionError
from ..flow.limits import CircuitBreaker, validate_flow_options

if TYPE_CHECKING:
    from .job import Job

ExceptionTypes = tuple[type[BaseException], ...]

#: Default bound on retries after an exception or a timeout.
DEFAULT_MAX_RETRIES = 3
#: Default bound on redeliveries after the worker was lost (crash, kill,
#: expired lease). Kept low on purpose: a job that crashes its worker is most
#: likely to crash the next one too, and each crash costs a process start.
DEFAULT_MAX_CRASHES = 1
#: Default delay before the first retry; it doubles with every failure.
DEFAULT_RETRY_BACKOFF = 1.0
#: Default upper bound of the retry delay.
DEFAULT_RETRY_BACKOFF_MAX = 300.0
#: Default random reduction of each retry delay (0.2 = up to 20% shorter), so
#: that jobs which failed together do not all retry at the same instant.
DEFAULT_RETRY_JITTER = 0.2


@dataclass(frozen=True)
class TaskOptions:
    """How the jobs of a task are queued, retried and limited."""

    name: str
    queue: str = "default"
    priority: int = 0
    max_retries: int = DEFAULT_MAX_RETRIES
    max_crashes: int = DEFAULT_MAX_CRASHES
    retry_backoff: float = DEFAULT_RETRY_BACKOFF
    retry_backoff_max: float = DEFAULT_RETRY_BACKOFF_MAX
    retry_jitter: float = DEFAULT_RETRY_JITTER
    retry_on: ExceptionTypes = ()
    dont_retry_on: ExceptionTypes = ()
    timeout: float | None = None
    result_ttl: float | None = None
    soft_timeout: float | None = None
    cancel_grace: float = 0.0
    memory_limit_mb: float | None = None
    store_result: bool = True
    keep_children: bool = False
    """Leave the processes the task started running when its job ends (they
    end with the worker); by default they are killed before the outcome is sent."""
    # Flow control (see flow/limits.py): enforced by the engine across all supervisors.
    rate_limit: str | None = None
    concurrency: int | None = None
    circuit_breaker: CircuitBreaker | None = None
    when_limited: str = "wait"
    unique: bool = False
    expires: float | None = None

    def validated(self) -> TaskOptions:
        """Return self, or raise InvalidOptionError naming the first wrong option and its range.

        The ranges are the engine's (see ``_base/bounds.py``): a value it cannot
        store is refused here, at the decorator or ``options()`` that gave it,
        rather than at every send.
        """
        _check_name("name", self.name)
        _check_name("queue", self.queue)
        check_int("priority", self.priority, low=INT64_MIN)
        check_int("max_retries", self.max_retries, low=0)
        check_int("max_crashes", self.max_crashes, low=0)
        for option in ("retry_backoff", "retry_backoff_max"):
            check_seconds(option, getattr(self, option), allow_zero=True)
        if self.retry_backoff > self.retry_backoff_max:
            raise InvalidOptionError(
                f"retry_backoff ({self.retry_backoff!r}) exceeds "
                f"retry_backoff_max ({self.retry_backoff_max!r})"
            )
        check_number("retry_jitter", self.retry_jitter, low=0, high=1)
        if self.timeout is not None:
            check_seconds("timeout", self.timeout, allow_zero=False)
        if self.result_ttl is not None:
            check_seconds("result_ttl", self.result_ttl, allow_zero=True)
        if self.soft_timeout is not None:
            check_seconds("soft_timeout", self.soft_timeout, allow_zero=False)
        check_seconds("cancel_grace", self.cancel_grace, allow_zero=True)
        if self.memory_limit_mb is not None:
            check_number("memory_limit_mb", self.memory_limit_mb, low=1, high=MAX_MEMORY_MB, unit="MiB")
        if not isinstance(self.store_result, bool):
            raise InvalidOptionError(f"store_result must be a bool, got {self.store_result!r}")
        if not isinstance(self.keep_children, bool):
            raise InvalidOptionError(f"keep_children must be a bool, got {self.keep_children!r}")
        for option in ("retry_on", "dont_retry_on"):
            for cls in getattr(self, option):
                if not (isinstance(cls, type) and issubclass(cls, BaseException)):
                    raise InvalidOptionError(f"{option} must hold exception classes, got {cls!r}")
        if self.expires is not None:
            check_seconds("expires", self.expires, allow_zero=False)
        validate_flow_options(self)
        return self

    def should_retry(self, exc: BaseException) -> bool:
        """Whether this exception may be retried (the retry count aside)."""
        if self.dont_retry_on and isinstance(exc, self.dont_retry_on):
            return False
        if self.retry_on:
            return isinstance(exc, self.retry_on)
        return True


def _check_name(option: str, value: object) -> None:
    if not isinstance(value, str) or not value:
        raise InvalidOptionError(f"{option} must be a non-empty str, got {value!r}")


def as_exception_types(option: str, value: object) -> ExceptionTypes:
    """Accept one exception class or an iterable of them."""
    if value is None:
        return ()
    if isinstance(value, type):
        return (value,)
    try:
        return tuple(cast("Iterable[type[BaseException]]", value))
    except TypeError:
        raise InvalidOptionError(
            f"{option} must be an exception class or a list of them, got {value!r}"
        ) from None


@dataclass(frozen=True)
class CallOptions:
    """Per-call overrides: where and when one call runs."""

    priority: int | None = None
    queue: str | None = None
    delay: float | None = None
    eta: float | None = None
    timeout: float | None = None
    max_retries: int | None = None
    labels: dict[str, Any] | None = None
    """Reach the task's context and the job's outcome (and label a schedule made with these options)."""
    unique_key: str | None = None
    depends_on: tuple[Job, ...] = ()


#: The call options of a plain send (``delay``, ``map``): nothing overridden.
#: Frozen and empty, so every plain send shares it.
DEFAULT_CALL = CallOptions()


def check_labels(labels: object) -> None:
    """Labels are a dict with str keys whose values JSON can store; InvalidOptionError if not."""
    if not isinstance(labels, dict) or not all(isinstance(k, str) for k in labels):
        raise InvalidOptionError(f"labels must be a dict with str keys, got {labels!r}")
    try:
        json.dumps(labels)
    except (TypeError, ValueError) as error:
        raise InvalidOptionError(f"labels must be JSON-serialisable: {error}") from None
