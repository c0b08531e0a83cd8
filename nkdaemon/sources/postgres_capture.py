"""PostgreSQL capture bookkeeping: the nkdaemon schema, its owner, the capture triggers.

What `install` and `uninstall` write into the source database, and how the drain reads
back who owns capture. Each function works inside the caller's connection and transaction;
the caller (PostgresSource) translates psycopg's errors.
"""

from __future__ import annotations

import uuid

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow

from nkdaemon.core.ownership import CaptureClaim, CaptureOwner, changed_during_install
from nkdaemon.sources.migrations import pending_migrations

Connection = psycopg.Connection[TupleRow]

ROW_TRIGGER = "nkdaemon_capture"
TRUNCATE_TRIGGER = "nkdaemon_capture_truncate"
TRIGGERS = (f"{ROW_TRIGGER}_i", f"{ROW_TRIGGER}_u", f"{ROW_TRIGGER}_d", TRUNCATE_TRIGGER)

# Event triggers on ddl_command_end, sql_drop and table_rewrite (migration 0006).
EVENT_TRIGGERS = ("nkdaemon_ddl", "nkdaemon_drop", "nkdaemon_rewrite")


# --- who owns capture -----------------------------------------------------------------------


def relation_exists(conn: Connection, relation: str) -> bool:
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (relation,)).fetchone()
    return bool(row and row[0])


def read_installation_id(conn: Connection) -> str | None:
    if not relation_exists(conn, "nkdaemon.meta"):
        return None
    row = conn.execute("SELECT value FROM nkdaemon.meta WHERE name = 'installation_id'").fetchone()
    return None if row is None else str(row[0])


def read_owner(conn: Connection) -> CaptureOwner | None:
    installation = read_installation_id(conn)
    if installation is None:
        return None
    row = None
    if relation_exists(conn, "nkdaemon.owner"):  # schema version 5 on
        row = conn.execute(
            "SELECT repository, host, since FROM nkdaemon.owner WHERE installation_id = %s",
            (installation,),
        ).fetchone()
    repository, host, since = row if row else (None, None, None)
    return CaptureOwner(installation=installation, repository=repository, host=host, since=since)


def claim_capture(conn: Connection, claim: CaptureClaim) -> str:
    """Record the claiming repository as the owner; under the installer lock."""
    current = read_installation_id(conn)
    if current != claim.seen:
        raise changed_during_install(read_owner(conn))
    installation = uuid.uuid4().hex if claim.new or current is None else current
    conn.execute(
        "INSERT INTO nkdaemon.meta (name, value) VALUES ('installation_id', %s) "
        "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        (installation,),
    )
    conn.execute(
        "INSERT INTO nkdaemon.owner AS o (installation_id, repository, host, since) "
        "VALUES (%s, %s, %s, clock_timestamp()) ON CONFLICT (one) DO UPDATE SET "
        "since = CASE WHEN o.installation_id = excluded.installation_id THEN o.since "
        "ELSE excluded.since END, installation_id = excluded.installation_id, "
        "repository = excluded.repository, host = excluded.host",
        (installation, claim.repository, claim.host),
    )
    return installation


# --- the schema -----------------------------------------------------------------------------


def migrate(conn: Connection) -> None:
    """Bring the nkdaemon schema to the newest version, inside the caller's transaction."""
    # One installer at a time; the lock ends with the transaction.
    conn.execute("SELECT pg_advisory_xact_lock(1852533605, 2)")
    row = conn.execute("SELECT to_regclass('nkdaemon.schema_version') IS NOT NULL").fetchone()
    installed = 0
    if row and row[0]:
        found = conn.execute("SELECT max(version) FROM nkdaemon.schema_version").fetchone()
        installed = int(found[0] or 0) if found else 0
    for _version, text in pending_migrations("postgresql", installed):
        conn.execute(text)
    conn.execute(
        "CREATE TABLE IF NOT EXISTS nkdaemon.meta (name text PRIMARY KEY, value text NOT NULL)"
    )


def drop_capture_schema(conn: Connection) -> None:
    """Every capture trigger, wherever it is, and the nkdaemon schema with the queue."""
    triggers = conn.execute(
        "SELECT n.nspname, c.relname FROM pg_trigger t "
        "JOIN pg_class c ON c.oid = t.tgrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE t.tgname = ANY(%s)",
        (list(TRIGGERS),),
    ).fetchall()
    for name in EVENT_TRIGGERS:  # first: they read the schema dropped below
        conn.execute(sql.SQL("DROP EVENT TRIGGER IF EXISTS {}").format(sql.Identifier(name)))
    for schema, table in sorted(set(triggers)):
        for trigger in TRIGGERS:
            conn.execute(
                sql.SQL("DROP TRIGGER IF EXISTS {} ON {}.{}").format(
                    sql.Identifier(trigger), sql.Identifier(schema), sql.Identifier(table)
                )
            )
    conn.execute("DROP SCHEMA IF EXISTS nkdaemon CASCADE")


# --- the triggers -----------------------------------------------------------------------------


def create_triggers(conn: Connection, table: sql.Composed, number: int) -> None:
    """Lock ``table`` (so no transaction writes it between install's seal and its end),
    then (re)create its capture triggers: statement triggers with a transition table for
    INSERT and DELETE on a plain table, row triggers for UPDATE (and for a partitioned
    table), a statement trigger for TRUNCATE. Triggers and functions are made in the
    database (nkdaemon.capture_triggers, migration 0007) from the table's columns and its
    identity in nkdaemon.tables, which must be recorded first: the event trigger
    regenerates the functions the same way when the table changes."""
    conn.execute(sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(table))
    conn.execute("SELECT nkdaemon.capture_triggers(%s)", (number,))


def drop_triggers(conn: Connection, table: sql.Composed) -> None:
    """The capture triggers of ``table``, if the table still exists."""
    exists = conn.execute("SELECT to_regclass(%s)", (table.as_string(conn),)).fetchone()
    if not exists or exists[0] is None:
        return
    for trigger in TRIGGERS:
        conn.execute(
            sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(sql.Identifier(trigger), table)
        )
