"""The fixture of the command's tests: ``cli``, the command run in this process on the test's queue."""

from __future__ import annotations

import pytest

import stoker
from apps import tasks as app
from cli.running import APP, Run
from stoker.cli import main


@pytest.fixture
def cli(queue: stoker.Queue, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Run:
    """Run ``stoker COMMAND apps.tasks:queue ARGS...`` in this process, on the test's queue."""
    monkeypatch.setattr(app, "queue", queue)
    capsys.readouterr()

    def run(command: str, *args: str) -> tuple[int, str, str]:
        code = main([command, APP, *args])
        out, err = capsys.readouterr()
        return code, out, err

    return run
