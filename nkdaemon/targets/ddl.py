"""--create-schema: tables as the backup defines them, in PostgreSQL or SQLite.

What cannot be carried over to the target (a default or a check in another dialect, an
index on expressions) is left out and named in ``notes``; the restore reports them.
Foreign keys are created DEFERRABLE INITIALLY DEFERRED, so rows may arrive in any order
within the restore transaction.
"""

from __future__ import annotations

from collections.abc import Callable

from psycopg import sql

from nkdaemon.core.keys import ColumnSpec, ForeignKeySpec, IndexSpec, TableSpec
from nkdaemon.core.portable_sql import portable_default
from nkdaemon.targets.table import quote
from nkdaemon.targets.values import sqlite_type

_FK_ACTIONS = frozenset({"CASCADE", "SET NULL", "SET DEFAULT", "RESTRICT", "NO ACTION"})

_PG_TYPES = {
    "int": "bigint",
    "decimal": "numeric",
    "float": "double precision",
    "text": "text",
    "bool": "boolean",
    "bytes": "bytea",
    "timestamptz": "timestamptz",
    "timestamp": "timestamp",
    "date": "date",
    "time": "time",
    "uuid": "uuid",
    "json": "jsonb",
    "other": "text",
}

# --- PostgreSQL --------------------------------------------------------------------------


def pg_create_table(
    name: sql.Composable, spec: TableSpec, source_dialect: str, notes: list[str]
) -> sql.Composed:
    """CREATE TABLE with columns, defaults, checks, the primary key and the natural key."""
    columns = [_pg_column(spec, column, source_dialect, notes) for column in spec.columns]
    for check in _checks_to_build(spec, source_dialect, "postgresql", notes):
        columns.append(sql.SQL("CHECK ({})").format(sql.SQL(check)))
    if spec.primary_key:
        columns.append(
            sql.SQL("PRIMARY KEY ({})").format(
                sql.SQL(", ").join(map(sql.Identifier, spec.primary_key))
            )
        )
    key = spec.key_column_names
    if key and set(key) != set(spec.primary_key) and not spec.full_row_identity:
        columns.append(sql.SQL("UNIQUE ({})").format(sql.SQL(", ").join(map(sql.Identifier, key))))
    return sql.SQL("CREATE TABLE {} ({})").format(name, sql.SQL(", ").join(columns))


def _pg_column(
    spec: TableSpec, column: ColumnSpec, source_dialect: str, notes: list[str]
) -> sql.Composed:
    type_sql = (
        column.sql_type
        if source_dialect == "postgresql" and column.sql_type
        else _pg_type(column.logical_type)
    )
    parts = [sql.Identifier(column.name), sql.SQL(type_sql)]
    if column.name in spec.surrogate_columns and column.logical_type == "int":
        always = column.identity == "always" and source_dialect == "postgresql"
        parts.append(sql.SQL(f"GENERATED {'ALWAYS' if always else 'BY DEFAULT'} AS IDENTITY"))
    else:
        default = _default_for(spec, column, source_dialect, "postgresql", notes)
        if default is not None:
            parts.append(sql.SQL("DEFAULT " + default))
    if not column.nullable:
        parts.append(sql.SQL("NOT NULL"))
    return sql.SQL(" ").join(parts)


def pg_constraints(
    spec: TableSpec, qualified: Callable[[str], sql.Composable], notes: list[str]
) -> list[sql.Composed]:
    """A created table's foreign keys, then its secondary indexes (once every table exists)."""
    statements = [
        sql.SQL(
            "ALTER TABLE {} ADD CONSTRAINT {} FOREIGN KEY ({}) REFERENCES {} ({})"
            "{} DEFERRABLE INITIALLY DEFERRED"
        ).format(
            qualified(spec.name),
            sql.Identifier(f"nkd_fk_{spec.number}_{number}"),
            sql.SQL(", ").join(map(sql.Identifier, fk.columns)),
            qualified(fk.ref_table),
            sql.SQL(", ").join(map(sql.Identifier, fk.ref_columns)),
            sql.SQL(_fk_actions(fk)),
        )
        for number, fk in enumerate(spec.foreign_keys)
    ]
    statements += [
        sql.SQL("CREATE {}INDEX {} ON {} ({})").format(
            sql.SQL("UNIQUE " if index.unique else ""),
            sql.Identifier(index.name or f"nkd_ix_{spec.number}"),
            qualified(spec.name),
            sql.SQL(", ").join(map(sql.Identifier, index.columns)),
        )
        for index in _indexes_to_build(spec, notes)
    ]
    return statements


def _pg_type(logical_type: str) -> str:
    if logical_type.startswith("array:"):
        return _PG_TYPES.get(logical_type[6:], "text") + "[]"
    return _PG_TYPES.get(logical_type, "text")


# --- SQLite ------------------------------------------------------------------------------


def sqlite_create_table(spec: TableSpec, source_dialect: str, notes: list[str]) -> str:
    """CREATE TABLE with everything SQLite keeps in the table itself (foreign keys too)."""
    single_int_pk = (
        len(spec.primary_key) == 1
        and spec.primary_key[0] in spec.surrogate_columns
        and spec.column(spec.primary_key[0]).logical_type == "int"
    )
    columns = []
    for column in spec.columns:
        if single_int_pk and column.name == spec.primary_key[0]:
            columns.append(f"{quote(column.name)} INTEGER PRIMARY KEY AUTOINCREMENT")
        else:
            columns.append(_sqlite_column(spec, column, source_dialect, notes))
    if spec.primary_key and not single_int_pk:
        columns.append(f"PRIMARY KEY ({', '.join(map(quote, spec.primary_key))})")
    key = spec.key_column_names
    if key and set(key) != set(spec.primary_key) and not spec.full_row_identity:
        columns.append(f"UNIQUE ({', '.join(map(quote, key))})")
    for fk in spec.foreign_keys:
        columns.append(
            f"FOREIGN KEY ({', '.join(map(quote, fk.columns))}) REFERENCES {quote(fk.ref_table)} "
            f"({', '.join(map(quote, fk.ref_columns))}){_fk_actions(fk)} "
            "DEFERRABLE INITIALLY DEFERRED"
        )
    columns += [f"CHECK ({c})" for c in _checks_to_build(spec, source_dialect, "sqlite", notes)]
    return f"CREATE TABLE {quote(spec.name)} ({', '.join(columns)})"


def _sqlite_column(
    spec: TableSpec, column: ColumnSpec, source_dialect: str, notes: list[str]
) -> str:
    declared = sqlite_type(column.logical_type, source_dialect=source_dialect)
    default = _default_for(spec, column, source_dialect, "sqlite", notes)
    return f"{quote(column.name)} {declared}{'' if column.nullable else ' NOT NULL'}" + (
        "" if default is None else f" DEFAULT ({default})"
    )


def sqlite_indexes(spec: TableSpec, notes: list[str]) -> list[str]:
    """CREATE INDEX for a created table's secondary indexes."""
    return [
        f"CREATE {'UNIQUE ' if index.unique else ''}INDEX "
        f"{quote(index.name or f'nkd_ix_{spec.number}')} "
        f"ON {quote(spec.name)} ({', '.join(map(quote, index.columns))})"
        for index in _indexes_to_build(spec, notes)
    ]


# --- both --------------------------------------------------------------------------------


def _fk_actions(fk: ForeignKeySpec) -> str:
    actions = ""
    for event, action in (("DELETE", fk.on_delete), ("UPDATE", fk.on_update)):
        if action and action in _FK_ACTIONS and action != "NO ACTION":
            actions += f" ON {event} {action}"
    return actions


def _default_for(
    spec: TableSpec, column: ColumnSpec, source: str, target: str, notes: list[str]
) -> str | None:
    if column.default is None or column.name in spec.surrogate_columns:
        return None
    carried = portable_default(
        column.default,
        logical_type=column.logical_type,
        source_dialect=source,
        target_dialect=target,
    )
    if carried is None:
        notes.append(f"{spec.name}.{column.name}: default {column.default} not reproduced")
    return carried


def _checks_to_build(spec: TableSpec, source: str, target: str, notes: list[str]) -> list[str]:
    """Checks carry over only within one dialect (their SQL is the source's)."""
    if source == target:
        return [check.sql for check in spec.checks]
    notes += [f"{spec.name}: check {c.name or c.sql} ({c.sql}) not reproduced" for c in spec.checks]
    return []


def _indexes_to_build(spec: TableSpec, notes: list[str]) -> list[IndexSpec]:
    """Secondary indexes, without the key's and primary key's (made with the table)."""
    built = {frozenset(spec.primary_key), frozenset(spec.key_column_names)}
    out = []
    for index in spec.indexes:
        if not index.columns:
            notes.append(f"{spec.name}: index {index.name} (expressions or partial) not reproduced")
        elif frozenset(index.columns) not in built or not index.unique:
            out.append(index)
    return out
