"""PostgreSQL wake-ups: a notification only when the daemon has armed one.

Every notifying transaction takes a database-wide lock at commit, so capture must not
notify from every transaction: after each drain pass arms the flag, the first sealed
transaction notifies and disarms it; later ones stay quiet until the next pass arms it
again (tests/e2e/test_daemon.py shows no write waits for the poll because of it).
"""

from __future__ import annotations

import time
from pathlib import Path

import psycopg

from nkdaemon.runtime.config import Settings
from nkdaemon.sources.migrations import migrations_dir
from nkdaemon.sources.postgres import conninfo_from_url
from tests.helpers import captured_notes, do_drain, do_install, engine_for, logged


def _notifications(listener: psycopg.Connection[tuple[object, ...]]) -> int:
    time.sleep(0.2)  # delivered at the notifying commit; give the socket a moment
    return sum(1 for _ in listener.notifies(timeout=0.5))


def _logged_notes(settings: Settings) -> list[str]:
    return [e.row["body"] for tx in logged(settings) for e in tx.events]


def _latest_version() -> int:
    return max(int(p.name.split("_")[0]) for p in migrations_dir("postgresql").glob("*.sql"))


def _commit(url: str, note: str) -> None:
    engine = engine_for(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO notes (body) VALUES (%s)", (note,))
    engine.dispose()


def test_one_notification_per_armed_wait(pg_url: str, tmp_path: Path) -> None:
    settings = captured_notes(pg_url, tmp_path)
    conninfo = conninfo_from_url(pg_url)
    with psycopg.connect(conninfo, autocommit=True) as listener:
        listener.execute("LISTEN nkdaemon_queue")

        do_drain(settings)  # a pass arms the flag
        for n in range(3):
            _commit(pg_url, f"first-{n}")
        assert _notifications(listener) == 1, "only the first transaction after arming"

        for n in range(3):
            _commit(pg_url, f"unarmed-{n}")
        assert _notifications(listener) == 0, "nobody re-armed: no wake-up needed"

        do_drain(settings)  # logs all six, and arms again
        _commit(pg_url, "second")
        assert _notifications(listener) == 1
    do_drain(settings)
    notes = _logged_notes(settings)
    assert notes == [
        *(f"first-{n}" for n in range(3)),
        *(f"unarmed-{n}" for n in range(3)),
        "second",
    ]


def test_a_version_2_capture_schema_drains_and_install_upgrades_it(
    pg_url: str, tmp_path: Path
) -> None:
    """A database installed by the previous release (schema version 2: a notification from
    every transaction) keeps draining under this release, and `install` migrates it."""
    settings = captured_notes(pg_url, tmp_path)
    version_2 = (migrations_dir("postgresql") / "0002_notify.sql").read_text()
    conninfo = conninfo_from_url(pg_url)
    with psycopg.connect(conninfo, autocommit=True) as conn:  # back to version 2
        conn.execute("DELETE FROM nkdaemon.schema_version WHERE version > 2")
        conn.execute(version_2)
        conn.execute("DROP SEQUENCE nkdaemon.wake_armed")

    _commit(pg_url, "under version 2")
    do_drain(settings)
    with psycopg.connect(conninfo, autocommit=True) as listener:
        listener.execute("LISTEN nkdaemon_queue")
        _commit(pg_url, "a")
        _commit(pg_url, "b")
        assert _notifications(listener) == 2, "version 2 notifies from every transaction"

        do_install(settings)
        row = listener.execute("SELECT max(version) FROM nkdaemon.schema_version").fetchone()
        assert row is not None and row[0] == _latest_version()
        do_drain(settings)
        _commit(pg_url, "c")
        _commit(pg_url, "d")
        assert _notifications(listener) == 1, "version 3 on notifies once per armed wait"
    do_drain(settings)
    notes = _logged_notes(settings)
    assert notes == ["under version 2", "a", "b", "c", "d"]
