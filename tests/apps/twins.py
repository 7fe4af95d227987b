"""Two queues of two databases in one module, each with a task named ``t``: different functions.

Task names are per database, so both register; a worker of each database
runs its own database's ``t``.
"""

from __future__ import annotations

import os

import stoker

_DIRECTORY = os.path.dirname(os.environ["STOKER_TEST_DB"])

left = stoker.Queue(os.path.join(_DIRECTORY, "twins-left.db"))
right = stoker.Queue(os.path.join(_DIRECTORY, "twins-right.db"))


@left.task(name="t")
def left_t(x: int) -> tuple[str, int]:
    return ("left", x)


@right.task(name="t")
def right_t(x: int) -> tuple[str, int]:
    return ("right", x)
