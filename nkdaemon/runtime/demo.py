"""`nkdaemon demo`: the whole cycle on the EDMS example in SQLite, nothing to set up.

Builds the example, installs capture, runs the daemon in-process while the application
writes, takes a snapshot, restores two earlier points in time into new files, checks each
against what the source held at that moment, and says what it did.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from nkdaemon.core.replay import natural_state
from nkdaemon.examples import edms
from nkdaemon.runtime.config import Settings, load_settings, toml_string
from nkdaemon.runtime.daemon import Daemon, RunState
from nkdaemon.runtime.session import Session
from nkdaemon.services.install import install, load_registry
from nkdaemon.services.restore import Restorer, open_restore_target, plan_restore
from nkdaemon.sources.factory import make_engine, open_source
from nkdaemon.sources.registry import reflect_registry

Say = Callable[[str], None]
Content = dict[str, dict[str, object]]
"""A database's content: table -> {natural key text: row} (as ``comparable()`` gives it)."""
Instant = tuple[datetime, Content]
"""A moment and the source's content at that moment."""


def _engine(path: Path) -> sa.Engine:
    engine = sa.create_engine(f"sqlite:///{path}", poolclass=sa.pool.NullPool)

    @sa.event.listens_for(engine, "connect")
    def _foreign_keys(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.execute("PRAGMA foreign_keys = ON")

    return engine


def _content(settings: Settings, *, captured: bool = True) -> Content:
    """A database's content by natural key (ids left out)."""
    engine = make_engine(settings.source)
    source = open_source(settings.source)
    try:
        if captured:
            tables = dict(load_registry(engine, settings, source).tables)
        else:
            tables = dict(reflect_registry(engine, settings).tables)
        rows = {n: source.read_rows(s) for n, s in tables.items()}
        return natural_state(tables, rows).comparable()
    finally:
        source.close()
        engine.dispose()


def _write_config(root: Path, database: Path, name: str = "nkdaemon.toml") -> Path:
    config = root / name
    config.write_text(
        f"[source]\nurl = {toml_string(f'sqlite:///{database}')}\n\n"
        f"[repository]\npath = {toml_string(str(root / 'repo'))}\n\n"
        '[capture]\npoll_interval = "200ms"\n\n[health]\nlisten = "127.0.0.1:0"\n\n'
        '[log]\nlevel = "warning"\n'
    )
    return config


def run_demo(directory: Path | None, say: Say) -> Path:
    root = directory or Path(tempfile.mkdtemp(prefix="nkdaemon-demo-"))
    engine, config, settings = _build_example(root, say)
    _install_capture(settings, say)
    instants = _run_daemon(engine, config, settings, say)
    for number, (moment, truth) in enumerate(instants, start=1):
        _restore_and_check(root, settings, number, moment, truth, say)
    say(f"   see a row's story: nkdaemon --config {config} history users username=alice2")
    return root


def _build_example(root: Path, say: Say) -> tuple[sa.Engine, Path, Settings]:
    """Step 1: the EDMS example database in ``root`` and its configuration."""
    root.mkdir(parents=True, exist_ok=True)
    for leftover in ("edms.db", "restored-1.db", "restored-2.db"):
        (root / leftover).unlink(missing_ok=True)
    database = root / "edms.db"
    engine = _engine(database)
    edms.create_schema(engine)
    with engine.begin() as conn:
        edms.seed_example(conn)
    config = _write_config(root, database)
    settings = load_settings(config)
    say(f"1. built the EDMS example (12 tables) in {database}")
    return engine, config, settings


def _install_capture(settings: Settings, say: Say) -> None:
    """Step 2: capture installed and the baseline snapshot taken."""
    with Session(settings, writer=True) as session:
        result = install(
            settings,
            engine=session.engine,
            source=session.source,
            layout=session.layout,
            state=session.state,
            log_store=session.log_store,
        )
    say(f"2. installed capture on {len(result.tables)} tables and took the baseline snapshot")


def _run_daemon(engine: sa.Engine, config: Path, settings: Settings, say: Say) -> list[Instant]:
    """Step 3: the daemon runs in-process while the application writes; the two
    instants to restore, each with the source's content at that moment."""
    daemon = Daemon(config, settings)
    thread = threading.Thread(target=daemon.run, name="demo-daemon", daemon=True)
    thread.start()
    _wait(lambda: daemon.state is RunState.RUNNING, "the daemon to start")
    instants: list[Instant] = []

    def logged_all() -> None:
        before = _last_lsn(daemon)
        daemon.request_drain()
        _wait(lambda: _last_lsn(daemon) > before and _caught_up(daemon), "the daemon to log")

    def instant() -> None:
        logged_all()
        instants.append((datetime.now(UTC), _content(settings)))

    with engine.begin() as conn:
        edms.add_user(conn, "dave", roles_=("author",))
        edms.add_document(conn, "DOC-0100", author="alice")
    instant()
    with engine.begin() as conn:
        conn.execute(
            edms.users.update().where(edms.users.c.username == "alice").values(username="alice2")
        )
    instant()
    daemon.snapshot_job()
    with engine.begin() as conn:
        conn.execute(edms.documents.delete().where(edms.documents.c.document_number == "DOC-0002"))
    logged_all()
    logged = daemon.metrics.events_logged._value.get()
    daemon.request_stop()
    thread.join(timeout=30)
    say(
        f"3. the daemon ran while the application wrote (a user, a document, alice -> alice2, "
        f"a cascading delete): {int(logged)} events logged, a snapshot taken on the way"
    )
    return instants


def _restore_and_check(
    root: Path, settings: Settings, number: int, moment: datetime, truth: Content, say: Say
) -> None:
    """Step 3 + number: restore ``moment`` into a new file and compare it with ``truth``."""
    target = root / f"restored-{number}.db"
    with Session(settings, writer=False) as session:
        plan = plan_restore(
            snapshots_dir=session.layout.snapshots_dir,
            log_store=session.log_store,
            at=moment,
            last_logged=None,
        )
        report = Restorer(
            plan=plan,
            target=open_restore_target(f"sqlite:///{target}", plan.snapshot.dialect),
            log_store=session.log_store,
        ).run(dry_run=False, create_schema=True, prune_target=False)
    restored = _content(
        load_settings(_write_config(root, target, f"check-{number}.toml")), captured=False
    )
    verdict = "identical to" if restored == truth else "DIFFERENT from"
    users = ", ".join(sorted(json.loads(k)["username"] for k in restored.get("users", {})))
    say(
        f"{3 + number}. restored {moment.isoformat(timespec='milliseconds')} "
        f"into {target.name}: "
        f"{report.rows_loaded} snapshot rows + {report.events_applied} changes, {verdict} "
        f"the source at that moment (users: {users})"
    )
    if restored != truth:
        raise RuntimeError(f"restore {number} does not match the source")


def _last_lsn(daemon: Daemon) -> int:
    health = daemon.health
    return int(health.document().get("last_lsn") or 0) if health is not None else 0


def _caught_up(daemon: Daemon) -> bool:
    health = daemon.health
    if health is None:
        return False
    status = health.document()
    return status.get("queue_depth") == 0 and not status.get("source_error")


def _wait(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)
