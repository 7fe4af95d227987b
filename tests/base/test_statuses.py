"""The statuses of ``stoker._base.statuses`` are the engine's, in the order of its codes."""

from __future__ import annotations

from pathlib import Path

import pytest

import stoker
from stoker._base.statuses import FINISHED, STATUSES, UNFINISHED
from stoker._core import Engine


def test_the_statuses_are_the_engines_in_the_order_of_their_codes(tmp_path: Path) -> None:
    # The engine counts every status it has, in the order of their codes.
    assert tuple(Engine(str(tmp_path / "jobs.db")).stats()) == STATUSES


def test_finished_is_what_the_engine_lets_purge(tmp_path: Path) -> None:
    engine = Engine(str(tmp_path / "jobs.db"))
    for status in FINISHED:
        assert engine.purge_jobs([status]) == 0
    for status in UNFINISHED:
        with pytest.raises(stoker.InvalidOptionError):
            engine.purge_jobs([status])
    assert set(UNFINISHED) | FINISHED == set(STATUSES) and not FINISHED & set(UNFINISHED)
