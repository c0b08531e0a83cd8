"""A read-only repository (a mounted backup copy) can be read, restored from and checked.

Commands that only read (`status`, `verify`, `history`, `restore`) work on it without
writing a byte; commands that write (`snapshot`, `drain`, `run`) exit 1 naming the folder
and the permission, not "a bug in nkdaemon".

Tests run as root, for whom file modes do not bite; each command runs in a process
without the capabilities that override them (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH,
CAP_FOWNER), which is what a read-only mount or another user meets.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa

from nkdaemon.repository.state import Checkpoint, StateStore
from nkdaemon.runtime.config import load_settings
from tests.helpers import ROOT, do_drain, do_install, engine_for, write_config

PR_CAPBSET_DROP = 24
OVERRIDES = (1, 2, 3)  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER


def _drop_overrides() -> None:
    """In the child before exec: root without the right to ignore file modes."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in OVERRIDES:
        if libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _unprivileged(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``python ARGV...`` without the overriding capabilities."""
    return _without_overrides([sys.executable, *argv], timeout)


def _without_overrides(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        preexec_fn=_drop_overrides,
    )


def _nkdaemon(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return _unprivileged("-m", "nkdaemon", "--config", str(config), *args)


def _make_read_only(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        path.chmod(path.stat().st_mode & ~0o222)


def _fingerprint(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "/"
        for p in sorted(root.rglob("*"))
    }


@pytest.fixture
def read_only_copy(tmp_path: Path) -> Path:
    """A SQLite source with two changes logged after the baseline; the repository made
    read-only. Returns the configuration file."""
    url = f"sqlite:///{tmp_path / 'app.db'}"
    engine = engine_for(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE users (id integer PRIMARY KEY, name text NOT NULL UNIQUE)"
        )
        conn.exec_driver_sql("INSERT INTO users (name) VALUES ('ann')")
    config = write_config(tmp_path, url)
    do_install(load_settings(config))
    with engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO users (name) VALUES ('bob')")
        conn.exec_driver_sql("UPDATE users SET name = 'anne' WHERE name = 'ann'")
    engine.dispose()
    do_drain(load_settings(config))
    repository = tmp_path / "repo"
    _make_read_only(repository)
    probe = _without_overrides(["/bin/sh", "-c", 'touch "$0"', str(repository / "probe")], 30)
    if probe.returncode == 0:
        pytest.skip("this machine lets the test user write a read-only folder")
    return config


@pytest.fixture
def unchanged(read_only_copy: Path) -> Callable[[], None]:
    repository = read_only_copy.parent / "repo"
    before = _fingerprint(repository)
    return lambda: _check_unchanged(repository, before)


def _check_unchanged(repository: Path, before: dict[str, str]) -> None:
    assert _fingerprint(repository) == before


def test_reading_commands_work_on_a_read_only_repository(
    read_only_copy: Path, unchanged: Callable[[], None], tmp_path: Path
) -> None:
    status = _nkdaemon(read_only_copy, "status", "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["queue_depth"] == 0

    verify = _nkdaemon(read_only_copy, "verify")
    assert verify.returncode == 0, verify.stderr
    assert "verified: no problem found" in verify.stdout

    history = _nkdaemon(read_only_copy, "history", "users", "name=anne")
    assert history.returncode == 0, history.stderr
    assert "update" in history.stdout and "anne" in history.stdout

    target = tmp_path / "restored.db"
    restore = _nkdaemon(
        read_only_copy, "restore", "--target", f"sqlite:///{target}", "--latest", "--create-schema"
    )
    assert restore.returncode == 0, restore.stderr
    engine = sa.create_engine(f"sqlite:///{target}")
    with engine.connect() as conn:
        names = sorted(r[0] for r in conn.exec_driver_sql("SELECT name FROM users"))
    engine.dispose()
    assert names == ["anne", "bob"]
    unchanged()


def test_writing_commands_on_a_read_only_repository_name_the_folder_and_the_permission(
    read_only_copy: Path, unchanged: Callable[[], None]
) -> None:
    repository = read_only_copy.parent / "repo"
    for command in ("snapshot", "drain", "run"):
        done = _nkdaemon(read_only_copy, command)
        assert done.returncode == 1, f"{command}: {done.stderr}"
        assert f"cannot write in the folder {repository}" in done.stderr, done.stderr
        assert "permission denied" in done.stderr
        assert "bug" not in done.stderr
    unchanged()


READ_STATE = """
import sys
from pathlib import Path
from nkdaemon.core.errors import RepositoryError
from nkdaemon.repository.state import StateStore
for folder in sys.argv[1:]:
    try:
        state = StateStore(Path(folder) / "state.db", read_only=True)
        print(state.get_meta("last"))
    except RepositoryError as exc:
        print(exc)
"""


def test_a_copy_taken_while_the_state_was_written_is_read_with_its_wal_or_refused_saying_why(
    tmp_path: Path,
) -> None:
    """A copy with the -wal and -shm files holds the last changes; a copy with only the
    -wal cannot be read in a read-only folder without losing them, and says so."""
    live = StateStore(tmp_path / "live" / "state.db")  # its changes stay in the -wal file
    live.begin()
    live.set_meta("last", "in the wal")
    live.commit()
    copies = {"whole": ("", "-wal", "-shm"), "no-shm": ("", "-wal")}
    for name, suffixes in copies.items():
        (tmp_path / name).mkdir()
        for suffix in suffixes:
            data = (tmp_path / "live" / f"state.db{suffix}").read_bytes()
            (tmp_path / name / f"state.db{suffix}").write_bytes(data)
        _make_read_only(tmp_path / name)
    live.close()
    done = _unprivileged("-c", READ_STATE, *(str(tmp_path / n) for n in copies))
    assert done.returncode == 0, done.stderr
    whole, no_shm = done.stdout.splitlines()[:2]
    assert whole == "in the wal"
    assert no_shm.startswith(f"cannot read {tmp_path / 'no-shm' / 'state.db'}")
    assert "state.db-wal holds changes" in no_shm


def test_a_copy_without_its_state_file_reads_as_an_empty_state_and_stays_without(
    tmp_path: Path,
) -> None:
    state = StateStore(tmp_path / "state.db", read_only=True)
    assert state.checkpoint() == Checkpoint()
    assert state.get_meta("installation_id") is None
    state.close()
    assert not (tmp_path / "state.db").exists()
