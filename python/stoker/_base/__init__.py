"""The base layer: serialization, signing, remote errors, usage, wake-ups and bounds.

It imports only the standard library, :mod:`stoker.errors` and the engine.
"""
