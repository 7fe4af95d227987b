"""Durable schedules: a task fired by cron expression, at an interval, or once.

::

    nightly = report.schedule_by_cron("0 3 * * *", args=("daily",), timezone="Europe/Berlin",
                                      name="nightly-report", missed="catch_up")
    ping.schedule_every(30, args=("db",))
    cleanup.options(priority=5, labels={"team": "ops"}).schedule_by_time(datetime(2030, 1, 1))
    queue.schedules()          # every schedule, with its next fire time
    nightly.pause(); nightly.resume(); nightly.delete()

Schedules live in the database. Every supervisor fires the due ones in its
loop; the engine claims each fire time in the transaction that enqueues its
job, so each fire enqueues exactly one job however many supervisors share the
database. A schedule with a ``name`` is updated, not duplicated, when created
again (so a program can declare its schedules every time it starts).

Missed fires (every supervisor was down for at least a whole period):
``missed="skip"`` (default) drops them and waits for the next fire time;
``missed="catch_up"`` enqueues one job for all of them at once. A one-shot
schedule whose time passed fires as soon as a supervisor runs.

A *schedule source* vetoes fires: an object with ``pre_send(schedule)``,
registered by name with :func:`add_source` (``Queue.add_schedule_source``) in the
module the workers import. Before each fire of a schedule created with
``source=NAME``, the supervisor calls it; raising
:class:`~stoker.errors.ScheduleCancelledError` skips that fire only, recorded
with outcome ``vetoed``. Any other exception also skips the fire, recorded as
``error``. A source may run in more than one supervisor for the same fire, so
it must not have side effects.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Protocol

from .._base.bounds import INT64_MAX, INT64_MIN, check_int, check_seconds, check_timestamp
from .._base.remote_errors import MESSAGE_MAX_CHARS, storable_text
from ..errors import InvalidOptionError, ScheduleCancelledError, ScheduleNotFoundError

if TYPE_CHECKING:
    from .._core import Engine, NewJob, ScheduleFire
    from .._core import Schedule as ScheduleRecord
    from .host import QueueView

log = logging.getLogger("stoker.schedule")

MISSED = ("skip", "catch_up")
#: Due schedules handled per round; a supervisor takes rounds until none is due.
FIRE_BATCH = 100


class ScheduleSource(Protocol):
    """Decides, before each fire of the schedules that name it, whether the fire happens."""

    def pre_send(self, schedule: Schedule) -> None:
        """Raise :class:`~stoker.errors.ScheduleCancelledError` to skip this fire."""


#: Schedule sources registered in this process, by name.
SOURCES: dict[str, ScheduleSource | Callable[[Schedule], None]] = {}


def _datetime(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


class Schedule:
    """A handle on one stored schedule. Every property reads storage."""

    __slots__ = ("_record", "id", "queue")

    def __init__(self, queue: QueueView, schedule_id: int, record: ScheduleRecord | None = None) -> None:
        self.queue = queue
        self.id = schedule_id
        self._record = record

    def __repr__(self) -> str:
        return f"<Schedule {self.id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Schedule) and other.id == self.id and other.queue is self.queue

    def __hash__(self) -> int:
        return hash(self.id)

    def record(self) -> ScheduleRecord:
        """The stored row, read now."""
        self._record = self.queue.engine.get_schedule(self.id)
        return self._record

    def _cached(self) -> ScheduleRecord:
        return self._record if self._record is not None else self.record()

    @property
    def name(self) -> str | None:
        return self._cached().name

    @property
    def task_name(self) -> str:
        return self._cached().task_name

    @property
    def labels(self) -> dict[str, Any]:
        text = self._cached().labels
        return dict(json.loads(text)) if text else {}

    @property
    def fire_time(self) -> datetime | None:
        """The fire time this handle was read at (for a source: the fire being decided)."""
        return _datetime(self._cached().next_fire_ms)

    @property
    def next_fire_at(self) -> datetime | None:
        """When it fires next (read now); None once a one-shot schedule has fired."""
        return _datetime(self.record().next_fire_ms)

    @property
    def paused(self) -> bool:
        return self.record().paused

    def pause(self) -> None:
        """Stop firing until resumed."""
        self.queue.engine.pause_schedule(self.id, True)

    def resume(self) -> None:
        """Fire again; fires missed while paused follow the schedule's missed policy."""
        self.queue.engine.pause_schedule(self.id, False)
        self.queue.database.wake(new_work=False)

    def delete(self) -> bool:
        """Delete the schedule and its fire records; False if it was already gone."""
        return self.queue.engine.delete_schedule(self.id)

    def fires(self, limit: int = 100) -> list[ScheduleFire]:
        """The recorded fires, newest first: outcome, job id, missed count, supervisor."""
        return self.queue.engine.schedule_fires(self.id, check_int("limit", limit, low=0))


def create(
    queue: QueueView,
    new_job: NewJob,
    *,
    kind: str,
    cron: str | None = None,
    timezone_name: str = "UTC",
    every_ms: int | None = None,
    at_ms: int | None = None,
    name: str | None = None,
    missed: str = "skip",
    source: str | ScheduleSource | None = None,
    labels: dict[str, Any] | None = None,
) -> Schedule:
    """Store a schedule of ``new_job`` (see the module documentation)."""
    if missed not in MISSED:
        raise InvalidOptionError(f"missed must be 'skip' or 'catch_up', got {missed!r}")
    source_name = _source_name(source)
    try:
        labels_text = json.dumps(labels or {}, sort_keys=True)
    except TypeError as error:
        raise InvalidOptionError(f"labels must be JSON-serializable, got {labels!r}: {error}") from None
    schedule_id = queue.engine.create_schedule(
        new_job,
        kind=kind,
        cron=cron,
        timezone=timezone_name,
        every_ms=every_ms,
        at_ms=at_ms,
        name=name,
        missed=missed,
        source=source_name,
        labels=labels_text,
    )
    # A supervisor sleeping until its next fire looks at the new schedule now.
    queue.database.wake(new_work=False)
    return Schedule(queue, schedule_id)


def _source_name(source: object) -> str | None:
    if source is None:
        return None
    if isinstance(source, str):
        return source
    for registered, candidate in SOURCES.items():
        if candidate is source:
            return registered
    raise InvalidOptionError(
        f"source must be the name of a source registered with queue.add_schedule_source, got {source!r}"
    )


def seconds_ms(option: str, seconds: object) -> int:
    """A period in seconds (a millisecond to about 1000 years), in ms."""
    return max(1, round(check_seconds(option, seconds, allow_zero=False) * 1000))


def time_ms(option: str, when: object) -> int:
    """A datetime (naive means local time) or a Unix timestamp in seconds, in ms."""
    if isinstance(when, datetime):
        return round(when.timestamp() * 1000)
    if isinstance(when, (int, float)) and not isinstance(when, bool):
        return round(check_timestamp(option, when) * 1000)
    raise InvalidOptionError(f"{option} must be a datetime or a Unix timestamp, got {when!r}")


def fire_due(engine: Engine, queue: QueueView, owner: str) -> int:
    """Fire every due schedule (asking sources first); how many jobs were enqueued."""
    enqueued = 0
    for _ in range(1000):
        due = engine.due_schedules(FIRE_BATCH)
        if not due:
            break
        for record in due:
            fire_ms = record.next_fire_ms
            if fire_ms is None:
                continue
            veto, error = _ask_source(queue, record)
            outcome, _ = engine.fire_schedule(record.id, fire_ms, owner=owner, veto=veto, error=error)
            if outcome == "enqueued":
                enqueued += 1
            elif outcome == "error":
                log.error("schedule %s (%s): fire skipped: %s", record.id, record.task_name, error)
        if len(due) < FIRE_BATCH:
            break
    return enqueued


def _ask_source(queue: QueueView, record: ScheduleRecord) -> tuple[str | None, str | None]:
    """``(veto, error)`` messages from the schedule's source, if it has one."""
    if record.source is None:
        return None, None
    source = SOURCES.get(record.source)
    if source is None:
        return None, (
            f"no schedule source named {record.source!r} is registered in this process; "
            "register it with queue.add_schedule_source in the module the workers import"
        )
    handle = Schedule(queue, record.id, record)
    try:
        if callable(source) and not hasattr(source, "pre_send"):
            source(handle)
        else:
            source.pre_send(handle)
    except ScheduleCancelledError as veto:
        return _storable_message(veto) or "vetoed by its source", None
    except Exception as error:
        return None, f"{storable_text(type(error).__qualname__)}: {_storable_message(error)}"
    return None, None


def _storable_message(error: BaseException) -> str:
    """The message of an error a source raised, as the database stores it (see ``remote_errors``)."""
    try:
        return storable_text(str(error), MESSAGE_MAX_CHARS)
    except Exception as str_error:
        return f"<str() of the exception failed: {type(str_error).__qualname__}>"


class Schedulable:
    """The schedule methods of a :class:`~stoker.Task` and of a :class:`~stoker.client.task.Sender`.

    ``args`` and ``kwargs`` are the arguments of the task's call at every fire;
    the job options (priority, queue, timeout, unique, expires...) are the
    task's, or the sender's. ``delay``, ``eta``, ``depends_on`` and
    ``when_limited="fail"`` do not apply to scheduled jobs.
    """

    def _scheduled(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[QueueView, NewJob, dict[str, Any] | None]:
        """The queue, the job every fire enqueues, and the labels of a schedule of this call."""
        raise NotImplementedError

    def _schedule(
        self, kind: str, args: tuple[Any, ...], kwargs: dict[str, Any] | None, **spec: Any
    ) -> Schedule:
        queue, new_job, labels = self._scheduled(tuple(args), dict(kwargs or {}))
        return create(queue, new_job, kind=kind, labels=labels, **spec)

    def schedule_by_cron(
        self,
        cron: str,
        *,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        timezone: str = "UTC",
        name: str | None = None,
        missed: str = "skip",
        source: str | ScheduleSource | None = None,
    ) -> Schedule:
        """Fire at every match of a cron expression (5 fields, or 6 with seconds first) in ``timezone``."""
        if not isinstance(cron, str):
            raise InvalidOptionError(f"cron must be a str like '0 3 * * *', got {cron!r}")
        return self._schedule(
            "cron", args, kwargs, cron=cron, timezone_name=timezone, name=name, missed=missed, source=source
        )

    def schedule_every(
        self,
        every: float,
        *,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        start: datetime | float | None = None,
        name: str | None = None,
        missed: str = "skip",
        source: str | ScheduleSource | None = None,
    ) -> Schedule:
        """Fire every ``every`` seconds, first at ``start`` (datetime, Unix time) or a period from now."""
        return self._schedule(
            "interval",
            args,
            kwargs,
            every_ms=seconds_ms("every", every),
            at_ms=None if start is None else time_ms("start", start),
            name=name,
            missed=missed,
            source=source,
        )

    def schedule_by_time(
        self,
        time: datetime | float,
        *,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        name: str | None = None,
        source: str | ScheduleSource | None = None,
    ) -> Schedule:
        """Fire once at ``time`` (a datetime, naive meaning local time, or a Unix timestamp)."""
        return self._schedule("once", args, kwargs, at_ms=time_ms("time", time), name=name, source=source)


def schedules(queue: QueueView) -> list[Schedule]:
    """Every schedule, by id (each handle holds the row it was listed with)."""
    return [Schedule(queue, record.id, record) for record in queue.engine.schedules()]


def get_schedule(queue: QueueView, schedule: int | str) -> Schedule:
    """A schedule by id or name; ``ScheduleNotFoundError`` (a ``KeyError``) if none."""
    engine = queue.engine
    if isinstance(schedule, str):
        for record in engine.schedules():
            if record.name == schedule:
                return Schedule(queue, record.id, record)
        raise ScheduleNotFoundError(schedule)
    if isinstance(schedule, int) and not INT64_MIN <= schedule <= INT64_MAX:
        raise ScheduleNotFoundError(schedule)  # Ids are 64-bit: no schedule has this one.
    return Schedule(queue, schedule, engine.get_schedule(schedule))


def add_source(name: str, source: ScheduleSource | Callable[[Schedule], None]) -> None:
    """Register a source (an object with ``pre_send(schedule)``, or a callable) under ``name``."""
    if not isinstance(name, str) or not name:
        raise InvalidOptionError(f"a schedule source needs a non-empty name, got {name!r}")
    if not (hasattr(source, "pre_send") or callable(source)):
        raise InvalidOptionError(f"a schedule source has pre_send(schedule) or is callable, got {source!r}")
    SOURCES[name] = source
