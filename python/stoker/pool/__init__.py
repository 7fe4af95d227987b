"""The pool: worker processes that run the jobs of a queue, and their supervisor.

``supervisor.py`` (the loop; its docstring draws the data flow), ``dispatch.py``
(claiming, jobs sent ahead), ``deadlines.py`` (timeouts, cancels, kills),
``outcomes.py`` (worker messages to storage), ``processes.py`` (worker
processes), ``housekeeping.py`` (heartbeat, reaping, schedules, polls),
``protocol.py`` (the messages), ``worker.py`` and ``runner.py`` (the worker's
side), ``thread.py`` (a supervisor on a thread), ``eager.py`` (test mode),
``tunables.py`` (the constants).
"""
