"""The statuses of a job, named once for the Python side.

The engine defines them (``Status`` in ``rust/stoker-engine/src/model.rs``)
and shows them by name; ``stoker._core`` exposes no list of them, so they are
written out here, in the order of their codes, and a test
(``tests/base/test_statuses.py``) pins this list to the engine's
(``Engine.stats()`` counts every status). Everything that lists, counts or
selects jobs by status reads these instead of a list of its own.
"""

from __future__ import annotations

#: Every status, in the order of the engine's codes:
#:
#: - ``pending``: runnable now, waiting to be claimed;
#: - ``scheduled``: waiting for its eta (a delayed job, or a retry in backoff);
#: - ``running``: claimed by a supervisor that holds a lease on it;
#: - ``complete``: finished with a result;
#: - ``dead``: failed for good (out of retries, or not retryable);
#: - ``cancelled``: cancelled before it finished;
#: - ``expired``: still not started when its expiry (``expires``) passed: it never ran;
#: - ``waiting``: waiting for the jobs it depends on (``depends_on``) to complete.
STATUSES: tuple[str, ...] = (
    "pending",
    "scheduled",
    "running",
    "complete",
    "dead",
    "cancelled",
    "expired",
    "waiting",
)

#: Statuses after which a job never changes again.
FINISHED: frozenset[str] = frozenset({"complete", "dead", "cancelled", "expired"})

#: Statuses of a job that has not finished yet, in the order of ``STATUSES``.
UNFINISHED: tuple[str, ...] = tuple(status for status in STATUSES if status not in FINISHED)
