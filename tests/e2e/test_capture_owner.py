"""One source feeds one repository: the capture schema records which one owns it.

- A second repository's `install` on a captured source is refused, naming the owner and
  the way out (`--take-over`); its `drain` is refused too, so the change stream is never
  split between two logs (the defect: of 20 inserts one repository logged 4, the other 16).
- `install --take-over` moves capture deliberately: the old repository's `drain` and
  `status` then fail naming the new owner, nothing is logged twice, and the new owner's
  baseline plus its log hold every change.
- Installing again from the owner stays idempotent; so does an installation made before
  owners were recorded, which drains on and gets its owner at the next `install`.
- A take-over between a drain's fence and its read stops that drain before it reads: the
  new owner deletes what its baseline holds.
- Two real daemons, writers running through the take-over: the first daemon's /readyz
  turns 503 naming the new owner; no change is in both logs, and the new owner's
  baseline plus its log hold every committed change.
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import Result

from nkdaemon.core.errors import CaptureOwnerError
from nkdaemon.repository.snapshots import list_snapshots, read_table
from nkdaemon.runtime.config import Settings, load_settings
from nkdaemon.runtime.session import Session
from nkdaemon.services.install import install
from tests.daemon_harness import (
    DaemonProcess,
    add_ledger_row,
    free_port,
    health_section,
    keep_writing,
    logged_notes,
    wait_for,
)
from tests.helpers import engine_for, run_cli, write_config
from tests.workloads import banking


def _repository(directory: Path, url: str, extra: str = "") -> tuple[Path, Settings]:
    directory.mkdir()
    config = write_config(directory, url, extra)
    return config, load_settings(config)


def _insert(engine: sa.Engine, *notes: str) -> None:
    for note in notes:  # one transaction each
        add_ledger_row(engine, note)


def _baseline_notes(settings: Settings) -> list[str]:
    """The ledger notes in the repository's newest snapshot."""
    snapshot = list_snapshots(settings.repository.path / "snapshots")[-1]
    table = snapshot.table("ledger")
    assert table is not None
    return [row["r"]["note"] for row in read_table(snapshot, table)]


def _ok(result: Result) -> str:
    assert result.exit_code == 0, result.output
    return result.output


def _refused(result: Result, *expected: str) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    for text in expected:
        assert text in result.output, f"{text!r} not in:\n{result.output}"
    return result.output


def _tags(prefix: str, count: int) -> list[str]:
    return [f"{prefix}-{i}" for i in range(count)]


def test_a_second_repository_is_refused_and_take_over_moves_capture_loudly(
    db_url: str, tmp_path: Path
) -> None:
    engine = engine_for(db_url)
    banking.create(engine)
    config_a, settings_a = _repository(tmp_path / "a", db_url)
    config_b, settings_b = _repository(tmp_path / "b", db_url)
    path_a, path_b = str(settings_a.repository.path), str(settings_b.repository.path)
    _ok(run_cli(config_a, "install"))

    # A second repository: refused, naming the owner; its drain takes nothing either.
    output = _refused(run_cli(config_b, "install"), path_a, "--take-over")
    assert "captured by another repository" in output
    _insert(engine, *_tags("a", 5))
    _refused(run_cli(config_b, "drain"), path_a)
    _ok(run_cli(config_a, "drain"))
    assert logged_notes(settings_a) == _tags("a", 5)
    assert logged_notes(settings_b) == []
    _insert(engine, *_tags("pending", 5))  # queued, not drained by A

    moved = _ok(run_cli(config_b, "install", "--take-over"))
    assert path_a in moved and "history starts here" in moved
    _insert(engine, *_tags("b", 5))

    # The old repository: its drain, its status and its install name the new owner.
    _refused(run_cli(config_a, "drain"), path_b, "--take-over")
    _refused(run_cli(config_a, "status"), path_b)
    _refused(run_cli(config_a, "install"), path_b, "--take-over")
    assert logged_notes(settings_a) == _tags("a", 5)

    # The new owner: the queued changes are in its baseline, the later ones in its log.
    _ok(run_cli(config_b, "drain"))
    assert logged_notes(settings_b) == _tags("b", 5)
    assert set(_baseline_notes(settings_b)) == set(_tags("a", 5) + _tags("pending", 5))
    _ok(run_cli(config_b, "verify", "--source"))
    _ok(run_cli(config_b, "status"))

    # Taken back: A starts a new history, B is the one refused now.
    back = _ok(run_cli(config_a, "install", "--take-over"))
    assert path_b in back and "history starts here" in back
    _insert(engine, "back-in-a")
    _refused(run_cli(config_b, "drain"), path_a)
    _ok(run_cli(config_a, "drain"))
    assert logged_notes(settings_a) == [*_tags("a", 5), "back-in-a"]
    assert logged_notes(settings_b) == _tags("b", 5)

    # B cannot remove the capture that feeds A, unless it insists.
    _refused(run_cli(config_b, "uninstall"), path_a, "--force")
    _insert(engine, "still-captured")
    _ok(run_cli(config_a, "drain"))
    assert logged_notes(settings_a)[-1] == "still-captured"
    _ok(run_cli(config_b, "uninstall", "--force"))
    _refused(run_cli(config_a, "drain"))


def test_a_running_daemon_reports_a_take_over_and_no_change_is_logged_twice_or_lost(
    pg_url: str, tmp_path: Path, daemons: Callable[..., DaemonProcess]
) -> None:
    engine = engine_for(pg_url)
    banking.create(engine)
    config_a, settings_a = _repository(tmp_path / "a", pg_url, health_section(free_port()))
    config_b, settings_b = _repository(tmp_path / "b", pg_url, health_section(free_port()))
    path_a, path_b = str(settings_a.repository.path), str(settings_b.repository.path)
    _ok(run_cli(config_a, "install"))
    first = daemons(config_a, "a")
    first.wait_ready()

    _refused(run_cli(config_b, "install"), path_a, "--take-over")

    tally, stop = banking.Tally(), threading.Event()
    writers = keep_writing(engine, tally, 2, stop)
    try:
        wait_for(lambda: logged_notes(settings_a), timeout=30, what="changes in A's log")
        assert path_a in _ok(run_cli(config_b, "install", "--take-over"))
        second = daemons(config_b, "b")
        second.wait_ready()
        wait_for(lambda: logged_notes(settings_b), timeout=30, what="changes in B's log")
    finally:
        stop.set()
        for thread in writers:
            thread.join()

    # The first daemon says so: not ready, the new owner named, in /readyz and /status.
    reasons = wait_for(
        lambda: first.get("/readyz")[0] == 503 and json.loads(first.get("/readyz")[1])["reasons"],
        timeout=30,
        what="/readyz 503 on the old owner",
    )
    assert any(path_b in r and "taken over" in r for r in reasons), reasons
    assert path_b in first.status()["capture_error"]
    assert first.logged_event("daemon.fault", kind="capture_owner") is not None
    result = run_cli(config_a, "status", "--json")
    assert result.exit_code == 1, result.output
    status = json.loads(result.stdout)
    assert status["capture_owner"]["repository"] == path_b
    assert not status["capture_owner"]["this_repository"]

    # Every committed change once: in A's log (before the take-over, so also in B's
    # baseline) or in B's log (after it); none in both, none twice, none missing.
    baseline = set(_baseline_notes(settings_b))
    wait_for(
        lambda: baseline | set(logged_notes(settings_b)) >= set(tally.committed),
        timeout=30,
        what="every committed change in B's baseline or log",
    )
    in_a, in_b = logged_notes(settings_a), logged_notes(settings_b)
    assert len(in_a) == len(set(in_a)) and len(in_b) == len(set(in_b))
    assert set(in_a) <= baseline and not baseline & set(in_b)
    assert baseline | set(in_b) == set(tally.committed)
    _ok(run_cli(config_b, "verify", "--source"))

    for daemon in (first, second):
        daemon.send(signal.SIGTERM)
        assert daemon.wait() == 0, daemon.stderr()


@contextlib.contextmanager
def _taken_over_on_exit(settings: Settings) -> Iterator[None]:
    """A fence guard: the repository of ``settings`` takes capture over right after the
    fence, before the drain reads the queue."""
    yield
    with Session(settings, writer=True) as s:
        install(
            settings,
            engine=s.engine,
            source=s.source,
            layout=s.layout,
            state=s.state,
            log_store=s.log_store,
            take_over=True,
        )


def test_a_take_over_between_fence_and_read_stops_the_drain_before_it_reads(
    db_url: str, tmp_path: Path
) -> None:
    """The new owner deletes what its baseline holds: a drain that went on reading after
    the take-over would find those changes gone and move its checkpoint over them."""
    engine = engine_for(db_url)
    banking.create(engine)
    config_a, settings_a = _repository(tmp_path / "a", db_url)
    _config_b, settings_b = _repository(tmp_path / "b", db_url)
    _ok(run_cli(config_a, "install"))
    _insert(engine, *_tags("pending", 3))

    with Session(settings_a, writer=True) as s:
        before = s.state.checkpoint()
        drainer = s.drainer(fence_guard=lambda: _taken_over_on_exit(settings_b))
        with pytest.raises(CaptureOwnerError, match="taken over") as raised:
            drainer.drain_once()
        assert str(settings_b.repository.path) in raised.value.message
        assert s.state.checkpoint() == before
    assert logged_notes(settings_a) == []
    assert set(_tags("pending", 3)) <= set(_baseline_notes(settings_b))


def _back_to_before_owners(url: str) -> None:
    """The capture schema as the release before owners left it (no owner table)."""
    engine = engine_for(url)
    with engine.begin() as conn:
        if url.startswith("sqlite"):
            conn.exec_driver_sql("DELETE FROM _nkd_schema_version WHERE version >= 2")
            conn.exec_driver_sql("DROP TABLE _nkd_owner")
            # and what later migrations (3: following schema changes) added
            conn.exec_driver_sql("ALTER TABLE _nkd_tables DROP COLUMN indexes")
            for table in ("_nkd_layouts", "_nkd_schema_changes", "_nkd_retired"):
                conn.exec_driver_sql(f"DROP TABLE {table}")
        else:
            conn.exec_driver_sql("DELETE FROM nkdaemon.schema_version WHERE version >= 5")
            conn.exec_driver_sql("DROP TABLE nkdaemon.owner")
    engine.dispose()


def test_an_installation_from_before_owners_drains_on_and_install_records_its_owner(
    db_url: str, tmp_path: Path
) -> None:
    engine = engine_for(db_url)
    banking.create(engine)
    config_a, settings_a = _repository(tmp_path / "a", db_url)
    config_b, _settings_b = _repository(tmp_path / "b", db_url)
    _ok(run_cli(config_a, "install"))
    _back_to_before_owners(db_url)

    _insert(engine, "old-schema")
    _ok(run_cli(config_a, "drain"))
    _refused(run_cli(config_b, "install"), "older release", "--take-over")

    assert "history starts here" not in _ok(run_cli(config_a, "install"))
    _refused(run_cli(config_b, "install"), str(settings_a.repository.path), "--take-over")
    _insert(engine, "migrated")
    _ok(run_cli(config_a, "drain"))
    assert logged_notes(settings_a) == ["old-schema", "migrated"]
