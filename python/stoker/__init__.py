"""stoker: a durable task queue and multiprocess executor for CPU-heavy work.

::

    import stoker

    queue = stoker.Queue("jobs.db")

    @queue.task(timeout=60, max_retries=2)
    def simulate(seed: int) -> float: ...

    job = simulate.delay(42)      # stored durably, returns at once
    queue.run_worker(processes=4) # elsewhere: a pool of worker processes
    job.result(timeout=120)       # the value, or the task's own exception
"""

from ._core import SCHEMA_VERSION
from ._core import __version__ as __version__
from .errors import (
    CircuitBreakerOpenError,
    DependencyFailedError,
    InvalidOptionError,
    JobCancelledError,
    JobExpiredError,
    JobNotFoundError,
    JobStateError,
    LeaseExpiredError,
    NotAStokerDatabaseError,
    RateLimitExceededError,
    RemoteTaskError,
    RemoteTraceback,
    ResultTimeoutError,
    ScheduleCancelledError,
    ScheduleNotFoundError,
    SchemaVersionError,
    SerializationError,
    StokerError,
    StorageBusyError,
    StorageError,
    TaskFailedError,
    TaskTimeoutError,
    UnknownTaskError,
    WorkerLostError,
    WorkerStartupError,
)
from .flow import CircuitBreaker
from .job import AttemptError, Job
from .queue import DeadLetter, Queue
from .schedule import Schedule, ScheduleSource
from .supervisor import Supervisor, SupervisorThread
from .task import Sender, Task, TaskOptions

__all__ = [
    "SCHEMA_VERSION",
    "AttemptError",
    "CircuitBreaker",
    "CircuitBreakerOpenError",
    "DeadLetter",
    "DependencyFailedError",
    "InvalidOptionError",
    "Job",
    "JobCancelledError",
    "JobExpiredError",
    "JobNotFoundError",
    "JobStateError",
    "LeaseExpiredError",
    "NotAStokerDatabaseError",
    "Queue",
    "RateLimitExceededError",
    "RemoteTaskError",
    "RemoteTraceback",
    "ResultTimeoutError",
    "Schedule",
    "ScheduleCancelledError",
    "ScheduleNotFoundError",
    "ScheduleSource",
    "SchemaVersionError",
    "Sender",
    "SerializationError",
    "StokerError",
    "StorageBusyError",
    "StorageError",
    "Supervisor",
    "SupervisorThread",
    "Task",
    "TaskFailedError",
    "TaskOptions",
    "TaskTimeoutError",
    "UnknownTaskError",
    "WorkerLostError",
    "WorkerStartupError",
]
