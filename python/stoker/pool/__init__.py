"""The pool: the supervisor loop, dispatch, outcomes, worker processes and
housekeeping.
"""
