"""Flow control (rate limits, concurrency, circuit breakers) and schedules.

They sit above the base layer and below the client: they are typed against
small protocols, never against :class:`~stoker.Queue`.
"""
