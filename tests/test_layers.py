"""The layers contract of pyproject.toml catches an upward import, however it is written.

``make lint`` runs import-linter with the contract ``[tool.importlinter]`` of
pyproject.toml (stoker._base, stoker.flow, stoker.client, stoker.pool, then
the CLI, testing and the executor, each importing only the layers below it).
Here the package's sources are copied into a temporary directory, an upward
import is planted in the copy (at module level, under ``if TYPE_CHECKING:``,
inside a function), and the same contract must fail naming it; the copy
without a plant must pass.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("importlinter", reason="import-linter is not installed (make lint installs it)")

ROOT = Path(__file__).parent.parent
PACKAGE = ROOT / "python" / "stoker"
#: lint-imports is installed beside the interpreter running the tests.
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

#: (file of the copy, text appended to it, the import the contract must name).
PLANTS = {
    "module level": (
        "_base/bounds.py",
        "\nfrom ..pool import supervisor as _planted_supervisor\n",
        "stoker._base.bounds -> stoker.pool.supervisor",
    ),
    "type-only": (
        "flow/limits.py",
        "\nfrom typing import TYPE_CHECKING as _PLANTED_TYPE_CHECKING\n\n"
        "if _PLANTED_TYPE_CHECKING:\n    from ..pool.supervisor import Supervisor as _PlantedSupervisor\n",
        "stoker.flow.limits -> stoker.pool.supervisor",
    ),
    "function level": (
        "_base/serialization.py",
        "\n\ndef _planted() -> object:\n    from ..cli import main\n\n    return main\n",
        "stoker._base.serialization -> stoker.cli",
    ),
}


def copy_of_the_package(directory: Path) -> Path:
    """The package's .py files and the project's pyproject.toml (its contract), copied under ``directory``."""
    shutil.copytree(PACKAGE, directory / "python" / "stoker", ignore=_not_python)
    shutil.copy(ROOT / "pyproject.toml", directory / "pyproject.toml")
    return directory


def _not_python(folder: str, names: list[str]) -> list[str]:
    return [name for name in names if not name.endswith(".py") and not (Path(folder) / name).is_dir()]


def lint_imports(project: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports --no-cache`` in ``project``, with the contract of its pyproject.toml."""
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo", str(project / "pyproject.toml")],
        cwd=project,
        env=dict(os.environ, PYTHONPATH=str(project / "python")),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_unplanted_copy_keeps_the_contract(tmp_path: Path) -> None:
    result = lint_imports(copy_of_the_package(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize("plant", PLANTS)
def test_a_planted_upward_import_breaks_the_contract(tmp_path: Path, plant: str) -> None:
    path, text, named = PLANTS[plant]
    project = copy_of_the_package(tmp_path)
    planted = project / "python" / "stoker" / path
    planted.write_text(planted.read_text() + text)
    result = lint_imports(project)
    assert result.returncode != 0, result.stdout + result.stderr
    assert "BROKEN" in result.stdout and named in result.stdout, result.stdout + result.stderr
