"""The code stays lint clean, formatted and strictly typed: CI runs these with the tests.

Configuration (rules, line length, mypy strictness, the checked package) is in
pyproject.toml; these tests only run the tools as a developer would, from the root.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RUFF_PATHS = ("nkdaemon", "tests", "benchmarks")


def _existing(paths: tuple[str, ...]) -> list[str]:
    """The directories that exist (a path not written yet is skipped, not an error)."""
    return [p for p in paths if (ROOT / p).is_dir()]


def _run(*args: str) -> None:
    command = [sys.executable, "-m", *args]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    code = done.returncode
    assert code == 0, f"`{' '.join(args)}` exited {code}:\n{done.stdout}\n{done.stderr}"


def test_ruff_check_is_clean() -> None:
    _run("ruff", "check", *_existing(RUFF_PATHS))


def test_ruff_format_is_clean() -> None:
    _run("ruff", "format", "--check", *_existing(RUFF_PATHS))


def test_mypy_strict_is_clean() -> None:
    _run("mypy")
