"""What flow control and schedules need of a queue, as protocols: the engine
and a way to wake the supervisors. :class:`~stoker.Queue` has both; this layer
never names it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .._core import Engine


class WakeUp(Protocol):
    """Tells the supervisors of a database that something changed (``Queue.database``)."""

    def wake(self, *, new_work: bool = True) -> None: ...


class QueueView(Protocol):
    """A queue as this layer sees it: its engine, and the wake-up of its supervisors."""

    @property
    def engine(self) -> Engine: ...

    @property
    def database(self) -> WakeUp: ...
