"""SQLite capture bookkeeping: the _nkd_ tables, their owner, the capture triggers.

SQLite has no schemas, so capture lives beside the application's tables under the _nkd_
prefix: a change list (_nkd_changes), one shadow table of row values per captured table
(_nkd_rows_N), and three triggers per table that fill them. Each function works inside the
caller's transaction; the caller (SqliteSource) translates sqlite3's errors.
"""

from __future__ import annotations

import sqlite3
import uuid
from datetime import datetime

import orjson

from nkdaemon.core.errors import SourceError
from nkdaemon.core.keys import TableSpec
from nkdaemon.core.ownership import CaptureClaim, CaptureOwner, changed_during_install
from nkdaemon.sources.migrations import pending_migrations


def quote(identifier: str) -> str:
    """An SQLite identifier in double quotes, embedded quotes doubled."""
    return '"' + identifier.replace('"', '""') + '"'


def has_table(conn: sqlite3.Connection, name: str) -> bool:
    row = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
    ).fetchone()
    return row is not None


# --- who owns capture -----------------------------------------------------------------------


def read_installation_id(conn: sqlite3.Connection) -> str | None:
    if not has_table(conn, "_nkd_meta"):
        return None
    row = conn.execute("SELECT value FROM _nkd_meta WHERE name = 'installation_id'").fetchone()
    return None if row is None else str(row[0])


def read_owner(conn: sqlite3.Connection) -> CaptureOwner | None:
    installation = read_installation_id(conn)
    if installation is None:
        return None
    row = None
    if has_table(conn, "_nkd_owner"):  # schema version 2 on
        row = conn.execute(
            "SELECT repository, host, since FROM _nkd_owner WHERE installation_id = ?",
            (installation,),
        ).fetchone()
    if row is None:
        return CaptureOwner(installation=installation, repository=None, host=None, since=None)
    return CaptureOwner(
        installation=installation,
        repository=row[0],
        host=row[1],
        since=datetime.fromisoformat(row[2]),
    )


def claim_capture(conn: sqlite3.Connection, claim: CaptureClaim) -> str:
    """Record the claiming repository as the owner; inside the install's write lock."""
    current = read_installation_id(conn)
    if current != claim.seen:
        raise changed_during_install(read_owner(conn))
    installation = uuid.uuid4().hex if claim.new or current is None else current
    conn.execute(
        "INSERT INTO _nkd_meta (name, value) VALUES ('installation_id', ?) "
        "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        (installation,),
    )
    conn.execute(
        "INSERT INTO _nkd_owner (one, installation_id, repository, host, since) "
        "VALUES (1, ?, ?, ?, strftime('%Y-%m-%dT%H:%M:%fZ', 'now')) "
        "ON CONFLICT (one) DO UPDATE SET "
        "since = CASE WHEN installation_id = excluded.installation_id THEN since "
        "ELSE excluded.since END, installation_id = excluded.installation_id, "
        "repository = excluded.repository, host = excluded.host",
        (installation, claim.repository, claim.host),
    )
    return installation


# --- the schema -----------------------------------------------------------------------------


def migrate(conn: sqlite3.Connection) -> None:
    """Bring the _nkd_ tables to the newest version, inside the caller's write transaction."""
    installed = 0
    if has_table(conn, "_nkd_schema_version"):
        installed = int(
            conn.execute("SELECT max(version) FROM _nkd_schema_version").fetchone()[0] or 0
        )
    for _version, text in pending_migrations("sqlite", installed):
        for statement in _statements(text):
            conn.execute(statement)
    conn.execute(
        "CREATE TABLE IF NOT EXISTS _nkd_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)"
    )


def _statements(script: str) -> list[str]:
    """Split a migration script into statements (no semicolons inside these scripts' strings)."""
    lines = [line for line in script.splitlines() if not line.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def drop_everything(conn: sqlite3.Connection) -> None:
    """Every _nkd_ trigger and table: capture uninstalled."""
    for kind in ("trigger", "table"):
        names = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master "
                f"WHERE type = '{kind}' AND name LIKE '\\_nkd\\_%' ESCAPE '\\'"
            )
        ]
        for name in names:
            conn.execute(f"DROP {kind.upper()} IF EXISTS {quote(name)}")


# --- the triggers ---------------------------------------------------------------------------


def refuse_if_pending(conn: sqlite3.Connection, number: int, name: str) -> None:
    """A table's capture is rebuilt only when none of its changes waits in the queue (the
    shadow table's slots follow its columns, so old changes could not be read back)."""
    row = conn.execute("SELECT count(*) FROM _nkd_changes WHERE tbl = ?", (number,)).fetchone()
    if row[0]:
        raise SourceError(
            f"table {name!r} changed shape while {row[0]} of its captured changes wait in "
            "the queue",
            hint="run `nkdaemon drain` first, then `nkdaemon install` again",
        )


def create_capture(conn: sqlite3.Connection, spec: TableSpec, columns: list[str]) -> None:
    """The shadow table, triggers and layout of one table being installed."""
    capture_table(conn, spec.number, spec.name, columns)
    conn.execute("DELETE FROM _nkd_layouts WHERE number = ?", (spec.number,))
    record_layout(conn, spec.number, queue_position(conn), columns)


def capture_table(conn: sqlite3.Connection, number: int, table: str, columns: list[str]) -> None:
    """The shadow table (created, or grown to enough slots) and the INSERT, UPDATE and
    DELETE triggers that copy ``columns`` (in order) into its slots."""
    grow_shadow(conn, number, len(columns))
    shadow = quote(f"_nkd_rows_{number}")
    old_slots = ", ".join(f"o{i}" for i in range(len(columns)))
    new_slots = ", ".join(f"n{i}" for i in range(len(columns)))
    old_values = ", ".join(f"OLD.{quote(c)}" for c in columns)
    new_values = ", ".join(f"NEW.{quote(c)}" for c in columns)
    bodies = {
        "I": (new_slots, new_values),
        "U": (f"{old_slots}, {new_slots}", f"{old_values}, {new_values}"),
        "D": (old_slots, old_values),
    }
    events = {"I": "INSERT", "U": "UPDATE", "D": "DELETE"}
    for op, (slot_list, values) in bodies.items():
        conn.execute(
            f"CREATE TRIGGER {quote(f'_nkd_{number}_{op}')} AFTER {events[op]} ON "
            f"{quote(table)} BEGIN "
            f"INSERT INTO _nkd_changes (tbl, op) VALUES ({number}, '{op}'); "
            f"INSERT INTO {shadow} (seq, {slot_list}) VALUES (last_insert_rowid(), {values}); "
            "END"
        )


def shadow_width(conn: sqlite3.Connection, number: int) -> int | None:
    """How many columns' values a shadow table's rows hold (None: it does not exist)."""
    names = [str(r[1]) for r in conn.execute(f"PRAGMA table_info({quote(f'_nkd_rows_{number}')})")]
    return sum(1 for n in names if n.startswith("o")) if names else None


def grow_shadow(conn: sqlite3.Connection, number: int, width: int) -> None:
    """A shadow table with at least ``width`` old and new slots. Grown in place, never
    rebuilt: rows queued under a narrower layout keep their slots."""
    shadow = quote(f"_nkd_rows_{number}")
    have = shadow_width(conn, number)
    if have is None:
        slots = [f"o{i}" for i in range(width)] + [f"n{i}" for i in range(width)]
        conn.execute(f"CREATE TABLE {shadow} (seq INTEGER PRIMARY KEY, {', '.join(slots)})")
        return
    for i in range(have, width):
        conn.execute(f"ALTER TABLE {shadow} ADD COLUMN o{i}")
        conn.execute(f"ALTER TABLE {shadow} ADD COLUMN n{i}")


def queue_position(conn: sqlite3.Connection) -> int:
    """The highest seq the change list has ever given (0: none yet)."""
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = '_nkd_changes'").fetchone()
    return int(row[0]) if row else 0


def record_layout(conn: sqlite3.Connection, number: int, since: int, columns: list[str]) -> None:
    """Changes of the table queued after ``since`` hold ``columns`` in their slots."""
    conn.execute(
        "INSERT OR REPLACE INTO _nkd_layouts (number, since_seq, columns) VALUES (?, ?, ?)",
        (number, since, orjson.dumps(columns).decode()),
    )


def retire(conn: sqlite3.Connection, number: int, name: str) -> None:
    """Capture stops using a table number for good (its queued changes stay readable)."""
    conn.execute(
        "INSERT OR IGNORE INTO _nkd_retired (number, table_name, since_seq) VALUES (?, ?, ?)",
        (number, name, queue_position(conn)),
    )


def drop_triggers(conn: sqlite3.Connection, number: int) -> None:
    for op in ("I", "U", "D"):
        conn.execute(f"DROP TRIGGER IF EXISTS {quote(f'_nkd_{number}_{op}')}")


def drop_capture(conn: sqlite3.Connection, number: int) -> None:
    """One table's triggers, shadow table and layouts."""
    drop_triggers(conn, number)
    conn.execute(f"DROP TABLE IF EXISTS {quote(f'_nkd_rows_{number}')}")
    conn.execute("DELETE FROM _nkd_layouts WHERE number = ?", (number,))
