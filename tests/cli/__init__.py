"""Tests of the ``stoker`` command, one file per module of ``stoker.cli``.

A package, so that its ``conftest.py`` does not take the place of the one in
``tests/`` that the test modules import helpers from.
"""
