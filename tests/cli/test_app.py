"""Loading ``MODULE:QUEUE`` (``stoker.cli.app``): a bad reference, a module that raises, not a database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cli.running import APP, python_path, stoker_command
from conftest import HANG_GUARD
from stoker.cli import (
    EXIT_FAILED,
    main,
)


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("apps.tasks", "expected MODULE:QUEUE (like app.tasks:queue), got 'apps.tasks'"),
        ("apps.nothing_here:queue", "cannot import 'apps.nothing_here'"),
        ("apps.tasks:missing", "module 'apps.tasks' has no attribute 'missing'"),
        ("apps.tasks:add", "apps.tasks:add is a Task, not a stoker.Queue"),
    ],
)
def test_a_bad_app_reference_is_explained(
    reference: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["info", reference]) == EXIT_FAILED
    assert capsys.readouterr().err.startswith(f"stoker: {message}")


def _broken_module(directory: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    (directory / f"{name}.py").write_text("import stoker\n\nqueue = None\nx = 1 / 0\n")
    monkeypatch.chdir(directory)
    monkeypatch.syspath_prepend(str(directory))


def test_an_app_whose_module_raises_at_import_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _broken_module(tmp_path, monkeypatch, "broken_at_import")
    assert main(["info", "broken_at_import:queue"]) == EXIT_FAILED
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        "stoker: cannot import 'broken_at_import': ZeroDivisionError: division by zero "
        "(at broken_at_import.py, line 4) (--traceback shows the whole traceback)\n"
    )
    assert main(["info", "broken_at_import:queue", "--json"]) == EXIT_FAILED
    out, err = capsys.readouterr()
    assert json.loads(out)["error"]["message"].startswith(
        "cannot import 'broken_at_import': ZeroDivisionError"
    )


def test_traceback_shows_where_the_module_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _broken_module(tmp_path, monkeypatch, "broken_with_traceback")
    assert main(["info", "broken_with_traceback:queue", "--traceback"]) == EXIT_FAILED
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):")
    assert "x = 1 / 0" in err and "ZeroDivisionError: division by zero" in err
    assert err.splitlines()[-1] == (
        "stoker: cannot import 'broken_with_traceback': ZeroDivisionError: division by zero "
        "(at broken_with_traceback.py, line 4)"
    )


def test_the_command_names_a_module_that_raises_at_import_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "raises_here.py").write_text("import stoker\n\nraise RuntimeError('no config file')\n")
    result = subprocess.run(
        [sys.executable, "-m", "stoker", "show", "raises_here:queue", "1"],
        cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=python_path()),
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
        check=False,
    )
    assert (result.returncode, result.stdout) == (EXIT_FAILED, "")
    assert result.stderr == (
        "stoker: cannot import 'raises_here': RuntimeError: no config file "
        "(at raises_here.py, line 3) (--traceback shows the whole traceback)\n"
    )


def test_a_file_that_is_not_a_stoker_database(tmp_path: Path) -> None:
    db = tmp_path / "notes.db"
    db.write_text("shopping list\n")
    result = stoker_command(db, "info", APP)
    assert result.returncode == EXIT_FAILED
    assert result.stdout == ""
    assert result.stderr.strip() == (
        f"stoker: NotAStokerDatabaseError: {str(db)!r} is not a stoker database: "
        "the file is not an SQLite database"
    )
