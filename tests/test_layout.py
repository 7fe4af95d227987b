"""``scripts/check-layout``: the size ceilings of modules, classes and Rust files (run by ``make lint``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parent.parent / "scripts" / "check-layout"


def check_layout(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(root)], capture_output=True, text=True, timeout=60, check=False
    )


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def a_class(name: str, lines: int) -> str:
    """A class of exactly ``lines`` lines, with a decorator."""
    return "@dataclass\n" + f"class {name}:\n" + "    x = 1\n" * (lines - 2)


def test_files_and_classes_at_their_ceilings_pass(tmp_path: Path) -> None:
    write(tmp_path / "python/stoker/module.py", "x = 1\n" * 600)
    write(tmp_path / "python/stoker/sub/classes.py", a_class("AtTheCeiling", 450))
    write(tmp_path / "rust/crate/src/lib.rs", "// line\n" * 900)
    result = check_layout(tmp_path)
    assert (result.returncode, result.stdout) == (0, ""), result.stderr


def test_every_offender_is_named_and_the_check_fails(tmp_path: Path) -> None:
    write(tmp_path / "python/stoker/long_module.py", "x = 1\n" * 601)
    classes = "x = 1\n" + a_class("TooLong", 451) + a_class("Fine", 10)
    write(tmp_path / "python/stoker/sub/classes.py", classes)
    write(tmp_path / "rust/crate/src/storage/long.rs", "// line\n" * 901)
    write(tmp_path / "rust/target/debug/build/generated.rs", "// line\n" * 5000)
    write(tmp_path / "tests/not_checked.py", "x = 1\n" * 5000)
    result = check_layout(tmp_path)
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        "python/stoker/long_module.py: 601 lines (module ceiling 600)",
        "python/stoker/sub/classes.py:3: class TooLong is 451 lines (class ceiling 450)",
        "rust/crate/src/storage/long.rs: 901 lines (Rust file ceiling 900)",
    ]
    assert "3 over a size ceiling" in result.stderr
