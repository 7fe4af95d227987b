"""The base layer: serialization, signing, remote errors, usage, wake-ups, bounds and job statuses.

It imports only the standard library, :mod:`stoker.errors` and the engine.
"""
