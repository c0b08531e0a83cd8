"""The README and docs are tested by running what they show."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from nkdaemon.runtime.config import load_settings

ROOT = Path(__file__).resolve().parents[2]


def test_the_example_configuration_loads_with_every_section() -> None:
    settings = load_settings(ROOT / "config" / "nkdaemon.example.toml")
    assert settings.tables["documents"].natural_key == ("document_number",)
    assert settings.tables["audit_trail"].identity == "full"
    assert settings.snapshots.schedule == "0 3 * * *"


def test_the_quick_start_demo_runs_on_a_machine_with_no_server(tmp_path: Path) -> None:
    """`nkdaemon demo`, as the README's first command runs it."""
    result = subprocess.run(
        [sys.executable, "-m", "nkdaemon", "demo", "--dir", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "identical to the source at that moment (users: alice, bob" in result.stdout
    assert "identical to the source at that moment (users: alice2, bob" in result.stdout
    assert "DIFFERENT" not in result.stdout
    history = subprocess.run(
        [
            sys.executable,
            "-m",
            "nkdaemon",
            "--config",
            str(tmp_path / "demo" / "nkdaemon.toml"),
            "history",
            "users",
            "username=alice2",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert history.returncode == 0, history.stderr
    assert '{"username": "alice"} -> {"username": "alice2"}' in history.stdout


def test_the_readme_test_command_is_what_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = "python -m pytest -n 2 --dist worksteal"
    assert f"pip install -e '.[test]' && {command}" in readme
    assert f"exec python3 {command.removeprefix('python ')}\n" in ci
    assert "pip install -e . && nkdaemon demo" in readme
