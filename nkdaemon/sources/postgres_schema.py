"""PostgreSQL capture follows the captured tables' shapes (migration 0006 does the work).

Event triggers queue a schema change inside the DDL's own transaction where a superuser
could create them; otherwise each drain pass compares the recorded shapes with the catalog
("each pass"). New tables that ``[capture]`` selects are taken into capture here in either
mode. Each function works inside the caller's connection; the caller (PostgresSource)
translates psycopg's errors.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, LiteralString

import orjson
from psycopg import errors as pg_errors
from psycopg import sql

from nkdaemon.core.ports import SchemaChange
from nkdaemon.sources.postgres_capture import (
    EVENT_TRIGGERS,
    Connection,
    create_triggers,
    relation_exists,
)

EVENT_TRIGGER, EACH_PASS = "event trigger", "each pass"

# A table the application keeps locked delays the pass, never stalls it: the lock times out
# (a transient error) and the next pass tries again.
_LOCK_TIMEOUT = "SET LOCAL lock_timeout = '10s'"

# Captured tables whose recorded shape differs from the catalog, or that are gone or
# renamed: one catalog query for all of them.
_CHANGED = """
SELECT t.number FROM nkdaemon.tables t
WHERE t.schema_name = %s AND t.relid IS NOT NULL AND (
    NOT EXISTS (
        SELECT 1 FROM pg_catalog.pg_class c
        JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        WHERE c.oid = t.relid AND c.relname = t.table_name AND n.nspname = t.schema_name)
    OR t.constraints IS DISTINCT FROM nkdaemon.constraints_of(t.relid)
    OR EXISTS (
        (SELECT attnum, name, type, detail FROM nkdaemon.shape_now(t.relid)
         EXCEPT SELECT attnum, name, type, detail FROM nkdaemon.shapes s WHERE s.number = t.number)
        UNION ALL
        (SELECT attnum, name, type, detail FROM nkdaemon.shapes s WHERE s.number = t.number
         EXCEPT SELECT attnum, name, type, detail FROM nkdaemon.shape_now(t.relid))))
ORDER BY t.number
"""

_UNCAPTURED = """
SELECT c.relname::text FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND n.nspname <> 'nkdaemon' AND c.relkind IN ('r', 'p')
  AND NOT c.relispartition
  AND NOT EXISTS (SELECT 1 FROM nkdaemon.tables t
                  WHERE t.schema_name = n.nspname AND t.table_name = c.relname)
ORDER BY c.relname
"""

# Primary key and unique columns: what a natural key is inferred from, so an UPDATE that
# changes one of them queues the old row.
_IDENTITY = """
SELECT array_agg(DISTINCT a.attname::text ORDER BY a.attname::text)
FROM pg_catalog.pg_index i
JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
WHERE i.indrelid = %s::regclass AND (i.indisprimary OR i.indisunique) AND a.attnum > 0
"""

_NEXT_NUMBER = """
SELECT greatest(
    (SELECT coalesce(max(number), 0) FROM nkdaemon.tables),
    (SELECT coalesce(max(value::integer), 0) FROM nkdaemon.meta
     WHERE name = 'table_number_max'),
    (SELECT coalesce(max(number), 0) FROM nkdaemon.retired)) + 1
"""


def capture_mode(conn: Connection) -> str:
    """ "event trigger" when all of capture's event triggers are there and enabled."""
    row = conn.execute(
        "SELECT count(*) FROM pg_catalog.pg_event_trigger "
        "WHERE evtname = ANY(%s) AND evtenabled <> 'D'",
        (list(EVENT_TRIGGERS),),
    ).fetchone()
    return EVENT_TRIGGER if row and row[0] == len(EVENT_TRIGGERS) else EACH_PASS


def arm_event_triggers(conn: Connection) -> str:
    """Create the event triggers if this role may; returns the mode capture runs in."""
    row = conn.execute("SELECT nkdaemon.arm_event_triggers()").fetchone()
    return str(row[0]) if row else EACH_PASS


def note_numbers(conn: Connection, numbers: Sequence[int]) -> None:
    """Remember the highest table number handed out, so no number is used twice."""
    if not numbers:
        return
    conn.execute(
        "INSERT INTO nkdaemon.meta AS m (name, value) VALUES ('table_number_max', %s) "
        "ON CONFLICT (name) DO UPDATE "
        "SET value = greatest(m.value::integer, excluded.value::integer)::text",
        (str(max(numbers)),),
    )


def retired_numbers(conn: Connection) -> set[int]:
    """Numbers capture stopped using (never given to another table)."""
    return {int(r[0]) for r in conn.execute("SELECT number FROM nkdaemon.retired")}


def register_table(
    conn: Connection, number: int, schema: str, name: str, identity: Sequence[str] | None
) -> None:
    """Record a captured table (its oid, identity columns) before its triggers are made."""
    qualified = sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(name))
    conn.execute(
        "INSERT INTO nkdaemon.tables (number, schema_name, table_name, relid, identity) "
        "VALUES (%s, %s, %s, %s::regclass, %s) ON CONFLICT (number) DO UPDATE "
        "SET schema_name = excluded.schema_name, table_name = excluded.table_name, "
        "relid = excluded.relid, identity = excluded.identity",
        (
            number,
            schema,
            name,
            qualified.as_string(conn),
            None if identity is None else list(identity),
        ),
    )
    note_numbers(conn, [number])


def _list(values: Sequence[str] | None) -> list[str] | None:
    return None if values is None else list(values)


def record_shape(conn: Connection, number: int) -> None:
    conn.execute("SELECT nkdaemon.record_shape(%s)", (number,))


def follow_changed_tables(conn: Connection, schema: str) -> list[SchemaChange]:
    """Each pass: queue the changes of every captured table whose shape moved."""
    if not relation_exists(conn, "nkdaemon.shapes"):
        return []
    numbers = [int(r[0]) for r in conn.execute(_CHANGED, (schema,)).fetchall()]
    changes = [_follow_one(conn, number) for number in numbers]
    return [c for c in changes if c is not None]


def _follow_one(conn: Connection, number: int) -> SchemaChange | None:
    """In one transaction that keeps the application's writes out of the table: compare
    again, queue the entry and a baseline (values may have changed unseen), rebuild."""
    with conn.transaction():
        conn.execute(_LOCK_TIMEOUT)
        row = conn.execute(
            "SELECT t.relid::regclass::text FROM nkdaemon.tables t "
            "JOIN pg_catalog.pg_class c ON c.oid = t.relid WHERE t.number = %s",
            (number,),
        ).fetchone()
        if row is not None:
            conn.execute(
                sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(sql.SQL(row[0]))
            )
        found = conn.execute(
            "SELECT nkdaemon.follow_table(%s, 'detected', true)::text", (number,)
        ).fetchone()
    return None if found is None or found[0] is None else schema_change(number, found[0])


def uncaptured_tables(conn: Connection, schema: str) -> list[str]:
    """The schema's tables capture does not follow (yet)."""
    if not relation_exists(conn, "nkdaemon.shapes"):
        return []
    return [str(r[0]) for r in conn.execute(_UNCAPTURED, (schema,)).fetchall()]


def capture_new_table(conn: Connection, schema: str, name: str) -> list[SchemaChange]:
    """Take a table into capture: a new number, its triggers, its shape, a "created" entry
    and every row as a baseline, in one transaction with the table locked. A captured table
    it refers to that nothing referred to has no rows in the drain's key index: it is
    queued first, with a baseline that only seeds the index ("referenced"). Nothing when
    the table vanished (or was taken) meanwhile."""
    table = sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(name))
    try:
        with conn.transaction():
            conn.execute(_LOCK_TIMEOUT)
            conn.execute(sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(table))
            conn.execute("LOCK TABLE nkdaemon.tables IN SHARE ROW EXCLUSIVE MODE")
            if _is_captured(conn, schema, name):
                return []
            queued = [_seed_referenced(conn, n, target) for n, target in _unreferred(conn, table)]
            number = _scalar(conn, _NEXT_NUMBER, ())
            identity = _scalar(conn, _IDENTITY, (table.as_string(conn),))
            register_table(conn, number, schema, name, identity)
            create_triggers(conn, table, number)
            record_shape(conn, number)
            queued.append(_queue_entry(conn, number, name, "created"))
    except pg_errors.UndefinedTable:
        return []
    return queued


# Captured tables the new table refers to that no captured table refers to (yet).
_UNREFERRED = """
SELECT DISTINCT t.number, t.relid::regclass::text FROM pg_catalog.pg_constraint c
JOIN nkdaemon.tables t ON t.relid = c.confrelid
WHERE c.conrelid = %s::regclass AND c.contype = 'f' AND NOT EXISTS (
    SELECT 1 FROM pg_catalog.pg_constraint r JOIN nkdaemon.tables o ON o.relid = r.conrelid
    WHERE r.confrelid = t.relid AND r.contype = 'f')
ORDER BY t.number
"""


def _unreferred(conn: Connection, table: sql.Composed) -> list[tuple[int, str]]:
    rows = conn.execute(_UNREFERRED, (table.as_string(conn),)).fetchall()
    return [(int(number), str(relation)) for number, relation in rows]


def _seed_referenced(conn: Connection, number: int, relation: str) -> SchemaChange:
    conn.execute(sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(sql.SQL(relation)))
    name = _scalar(conn, "SELECT table_name FROM nkdaemon.tables WHERE number = %s", (number,))
    return _queue_entry(conn, number, str(name), "referenced")


def _queue_entry(conn: Connection, number: int, name: str, kind: str) -> SchemaChange:
    """Queue a schema entry with the table's recorded columns, and every row as baseline."""
    columns = _scalar(
        conn,
        "SELECT array_agg(name ORDER BY attnum) FROM nkdaemon.shapes WHERE number = %s",
        (number,),
    )
    entry = {
        "name": name,
        "kind": kind,
        "columns": list(columns or []),
        "renamed": [],
        "baseline": True,
        "command": "CREATE TABLE",
    }
    conn.execute(
        "INSERT INTO nkdaemon.queue (tbl, op, new) VALUES (%s, 'S', %s::json)",
        (number, orjson.dumps(entry).decode()),
    )
    conn.execute("SELECT nkdaemon.queue_baseline(%s)", (number,))
    return schema_change(number, entry)


def _is_captured(conn: Connection, schema: str, name: str) -> bool:
    row = conn.execute(
        "SELECT 1 FROM nkdaemon.tables WHERE schema_name = %s AND table_name = %s",
        (schema, name),
    ).fetchone()
    return row is not None


def _scalar(conn: Connection, query: LiteralString, params: tuple[Any, ...]) -> Any:
    row = conn.execute(query, params).fetchone()
    return None if row is None else row[0]


def schema_change(number: int, entry: str | dict[str, Any]) -> SchemaChange:
    """A queued schema entry (op 'S', JSON) as the port's SchemaChange."""
    data: dict[str, Any] = orjson.loads(entry) if isinstance(entry, str) else entry
    columns = data.get("columns")
    return SchemaChange(
        table=number,
        name=str(data["name"]),
        columns=None if columns is None else tuple(str(c) for c in columns),
        kind=str(data.get("kind") or "altered"),
        renamed=tuple((str(old), str(new)) for old, new in data.get("renamed") or ()),
        baseline=bool(data.get("baseline")),
        command=str(data.get("command") or ""),
    )
