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
from .client.context import JobContext, current_job
from .client.events import Middleware, SendMessage, State, worker_state
from .client.job import AttemptError, Job, Outcome, Progress, gather, gather_async
from .client.options import TaskOptions
from .client.queue import DeadLetter, Queue
from .client.task import Sender, Task
from .errors import (
    CircuitBreakerOpenError,
    DependencyFailedError,
    InvalidOptionError,
    JobCancelledError,
    JobExpiredError,
    JobNotFoundError,
    JobStateError,
    LeaseExpiredError,
    MainModuleNotGuardedError,
    MaxRetriesExceededError,
    MemoryLimitExceededError,
    MiddlewareError,
    NoResultError,
    NotAStokerDatabaseError,
    PluginTriggerError,
    QueueError,
    RateLimitExceededError,
    RejectedError,
    RemoteTaskError,
    RemoteTraceback,
    RequeueLimitError,
    ResultExpiredError,
    ResultGetError,
    ResultNotReadyError,
    ResultTimeoutError,
    ScheduleCancelledError,
    ScheduleNotFoundError,
    SchemaVersionError,
    SecurityError,
    SendError,
    SerializationError,
    SoftTimeoutError,
    StokerError,
    StorageBusyError,
    StorageError,
    TaskFailedError,
    TaskRegisteredTwiceError,
    TaskTimeoutError,
    UnknownTaskError,
    WorkerLostError,
    WorkerStartupError,
)
from .executor import Executor
from .flow.limits import CircuitBreaker
from .flow.schedule import Schedule, ScheduleSource
from .pool.supervisor import Supervisor, SupervisorThread

__all__ = [
    "SCHEMA_VERSION",
    "AttemptError",
    "CircuitBreaker",
    "CircuitBreakerOpenError",
    "DeadLetter",
    "DependencyFailedError",
    "Executor",
    "InvalidOptionError",
    "Job",
    "JobCancelledError",
    "JobContext",
    "JobExpiredError",
    "JobNotFoundError",
    "JobStateError",
    "LeaseExpiredError",
    "MainModuleNotGuardedError",
    "MaxRetriesExceededError",
    "MemoryLimitExceededError",
    "Middleware",
    "MiddlewareError",
    "NoResultError",
    "NotAStokerDatabaseError",
    "Outcome",
    "PluginTriggerError",
    "Progress",
    "Queue",
    "QueueError",
    "RateLimitExceededError",
    "RejectedError",
    "RemoteTaskError",
    "RemoteTraceback",
    "RequeueLimitError",
    "ResultExpiredError",
    "ResultGetError",
    "ResultNotReadyError",
    "ResultTimeoutError",
    "Schedule",
    "ScheduleCancelledError",
    "ScheduleNotFoundError",
    "ScheduleSource",
    "SchemaVersionError",
    "SecurityError",
    "SendError",
    "SendMessage",
    "Sender",
    "SerializationError",
    "SoftTimeoutError",
    "State",
    "StokerError",
    "StorageBusyError",
    "StorageError",
    "Supervisor",
    "SupervisorThread",
    "Task",
    "TaskFailedError",
    "TaskOptions",
    "TaskRegisteredTwiceError",
    "TaskTimeoutError",
    "UnknownTaskError",
    "WorkerLostError",
    "WorkerStartupError",
    "current_job",
    "gather",
    "gather_async",
    "worker_state",
]
